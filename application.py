"""WSGI entry point: Elastic Beanstalk's Python platform and the Procfile load `application`."""

from app import create_app

application = create_app()

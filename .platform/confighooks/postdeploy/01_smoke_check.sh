#!/bin/bash
# Configuration deployments (eb setenv, option changes) run confighooks, not hooks: the same
# step must run then too (a new DB_SSL_CA path, a restarted app). One script, two triggers.
exec "$(dirname "$0")/../../hooks/postdeploy/01_smoke_check.sh" "$@"

-- Emails are unique case-insensitively and nothing more: zoë@ and zoe@ are two addresses.
-- 0001's key compared under utf8mb4_unicode_ci, which also ignores accents (and folds ß to
-- ss, fullwidth to ASCII). email keeps that collation and its value as the user typed it;
-- the unique key moves to email_key, LOWER(email) compared byte for byte (utf8mb4_bin).
--
-- The server computes the key: one definition for every writer, including the release
-- still serving during a rolling deploy, which inserts and updates email only. LOWER()
-- under utf8mb4_unicode_ci maps case by UCA 4.0.0 on MySQL 8.x and MariaDB 10.11 alike.
-- STORED (not VIRTUAL): the key lives in the row, the most widely supported way to index a
-- generated column on both. MariaDB refuses NOT NULL on a generated column; LOWER() of a
-- NOT NULL column is never NULL anyway.
--
-- One ALTER, so the table is never without a unique key. It rebuilds the table (writes wait
-- meanwhile) and changes nothing if it fails. No existing rows can clash: two emails with
-- the same LOWER() already clashed under utf8mb4_unicode_ci.
ALTER TABLE users
    ADD COLUMN email_key VARCHAR(254) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin
        GENERATED ALWAYS AS (LOWER(email)) STORED,
    ADD UNIQUE KEY uq_users_email_key (email_key),
    DROP INDEX uq_users_email;

-- pgveil driver matrix, pgbench part 1 (role calmony_app, -M extended, -t 1).
-- Values come from -D (see tests/drivers.rs); in the extended and prepared
-- modes every :var is sent as a parameter. A check is a division by zero
-- when it does not hold, which aborts the client; values read back are
-- printed with \shell echo RESULT … for tests/drivers.rs to compare.
\shell echo RESULT step insert
INSERT INTO users (email, name) VALUES (:e_ann, :n_ann);
INSERT INTO users (email, name) VALUES (:e_bob, :n_bob);
INSERT INTO users (email, name) VALUES (:e_cat, :n_cat);
\shell echo RESULT step lookup
SELECT name AS got FROM users WHERE email = :bob_variant \gset
\shell echo RESULT :got
SELECT 1 / (count(*) = 0)::int FROM users WHERE email = :e_nobody;
\shell echo RESULT step update
UPDATE users SET name = :n_bob_upd WHERE email = :e_bob;
UPDATE users SET email = :e_cat2 WHERE email = :e_cat;
SELECT name AS got FROM users WHERE email = :e_cat2 \gset
\shell echo RESULT :got
SELECT 1 / (count(*) = 0)::int FROM users WHERE email = :e_cat;
\shell echo RESULT step delete
DELETE FROM users WHERE email = :e_ann;
SELECT 1 / (count(*) = 0)::int FROM users WHERE email = :e_ann;
\shell echo RESULT step read_plaintext
SELECT email AS got_email, name AS got_name FROM users WHERE id = (SELECT min(id) FROM users) \gset
\shell echo RESULT :got_email :got_name
SELECT email AS got_email, name AS got_name FROM users WHERE id = (SELECT max(id) FROM users) \gset
\shell echo RESULT :got_email :got_name
\shell echo RESULT step transaction_rollback
BEGIN;
INSERT INTO users (email, name) VALUES (:e_tx, :n_tx);
SELECT name AS got FROM users WHERE email = :e_tx \gset
\shell echo RESULT :got
UPDATE users SET name = :n_bob_tx WHERE email = :e_bob;
ROLLBACK;
SELECT 1 / (count(*) = 0)::int FROM users WHERE email = :e_tx;
SELECT name AS got FROM users WHERE email = :e_bob \gset
\shell echo RESULT :got

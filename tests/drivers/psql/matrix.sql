-- The pgveil driver-matrix scenario for psql 15 (run by tests/drivers.rs):
--
--     psql -X -At -v ON_ERROR_STOP=1 -v tag=TAG -v TAG=TAG_IN_UPPER_CASE -v nn=NN \
--          -f matrix.sql URL
--
-- URL connects as calmony_app; the script switches roles with \connect.
-- psql 15 speaks only the simple protocol (no parameters, no \bind, no
-- \startpipeline), so values are literals (interpolated client-side with
-- :'var') and pgveil encrypts them in the statement text. Every step starts
-- with a `== step` line; tests/drivers.rs compares the output line by line.

\set e_ann :tag '-ann@example.com'
\set e_bob :tag '-bob@example.com'
\set e_cat :tag '-cat@example.com'
\set e_cat2 :tag '-cat2@example.com'
\set e_nobody :tag '-nobody@example.com'
\set e_tx :tag '-tx@example.com'
\set e_pipe1 :tag '-pipe1@example.com'
\set e_pipe2 :tag '-pipe2@example.com'
\set e_pipe3 :tag '-pipe3@example.com'
\set n_ann :tag ' Ann Example'
\set n_bob :tag ' Bob Example'
\set n_bob_upd :tag ' Bob Updated'
\set n_bob_tx :tag ' Bob In Tx'
\set n_cat :tag ' Cat Example'
\set n_tx :tag ' Tx Rolled Back'
\set n_pipe1 :tag ' Pipe One'
\set n_pipe2 :tag ' Pipe Two'
\set n_pipe3 :tag ' Pipe Three'
\set n_dana :tag ' Dana Patient'
\set n_eli :tag ' Eli Patient'
\set n_fay :tag ' Fay Rolled Back'
\set ssn_dana '9' :nn '-11-2222'
\set ssn_dana_digits '9' :nn '112222'
\set ssn_eli '9' :nn '-33-4444'
\set ssn_fay '9' :nn '-55-6666'
-- How a user might type Bob's address (trim and lowercase normalisers);
-- TAG is the tag in upper case.
\set bob_variant '  ' :TAG '-BOB@Example.COM '

\echo == insert
INSERT INTO users (email, name) VALUES (:'e_ann', :'n_ann'), (:'e_bob', :'n_bob'), (:'e_cat', :'n_cat');
\connect - clinician
INSERT INTO phi.member_profile (legal_name, date_of_birth, ssn, risk_score)
  VALUES (:'n_dana', '1984-02-29', :'ssn_dana', 87), (:'n_eli', '1990-01-15', :'ssn_eli', 12);

\echo == lookup
\connect - calmony_app
SELECT name FROM users WHERE email = :'bob_variant';
SELECT count(*) FROM users WHERE email = :'e_nobody';
\connect - clinician
SELECT legal_name, date_of_birth, risk_score FROM phi.member_profile WHERE ssn = :'ssn_dana_digits';
\connect - intake
SELECT legal_name FROM phi.member_profile WHERE ssn = :'ssn_dana';

\echo == update
\connect - calmony_app
UPDATE users SET name = :'n_bob_upd' WHERE email = :'e_bob';
UPDATE users SET email = :'e_cat2' WHERE email = :'e_cat';
SELECT name FROM users WHERE email = :'e_cat2';
\connect - clinician
UPDATE phi.member_profile SET risk_score = 88 WHERE ssn = :'ssn_dana';

\echo == delete
DELETE FROM phi.member_profile WHERE ssn = :'ssn_eli';
\connect - calmony_app
DELETE FROM users WHERE email = :'e_ann';

\echo == read_plaintext
SELECT email, name FROM users ORDER BY id;
\connect - clinician
SELECT legal_name, date_of_birth, ssn, risk_score FROM phi.member_profile;

\echo == read_ciphertext
\connect - dba
SELECT email, name FROM users ORDER BY id;
SELECT legal_name, date_of_birth, ssn, risk_score FROM phi.member_profile;

\echo == transaction_rollback
\connect - calmony_app
BEGIN;
INSERT INTO users (email, name) VALUES (:'e_tx', :'n_tx');
SELECT name FROM users WHERE email = :'e_tx';
UPDATE users SET name = :'n_bob_tx' WHERE email = :'e_bob';
ROLLBACK;
SELECT count(*) FROM users WHERE email = :'e_tx';
SELECT name FROM users WHERE email = :'e_bob';
\connect - clinician
BEGIN;
INSERT INTO phi.member_profile (legal_name, date_of_birth, ssn, risk_score)
  VALUES (:'n_fay', '2001-07-04', :'ssn_fay', 5);
ROLLBACK;
SELECT count(*) FROM phi.member_profile WHERE ssn = :'ssn_fay';

\echo == prepared_many
-- SQL-level PREPARE of a statement on a protected table is refused (pgveil
-- cannot see EXECUTE's values); psql 15 has no protocol-level prepared
-- statements. The closest thing: the same two statements executed 12 times
-- with different literals.
\connect - calmony_app
\set ON_ERROR_STOP 0
PREPARE lookup(text) AS SELECT name FROM users WHERE email = $1;
\set ON_ERROR_STOP 1
\set i 0
\ir prepared_one.sql

\echo == pipeline_error
-- psql 15 cannot pipeline (no \startpipeline); the closest thing is one
-- simple Query holding several statements (\;): the transaction committed
-- before the refused statement stands, the statement after it never runs.
\set ON_ERROR_STOP 0
BEGIN \; INSERT INTO users (email, name) VALUES (:'e_pipe1', :'n_pipe1') \; COMMIT \;
SELECT id FROM users ORDER BY email \;
INSERT INTO users (email, name) VALUES (:'e_pipe2', :'n_pipe2');
\set ON_ERROR_STOP 1
SELECT name FROM users WHERE email = :'e_pipe1';
SELECT count(*) FROM users WHERE email = :'e_pipe2';

\echo == usable_after_error
INSERT INTO users (email, name) VALUES (:'e_pipe3', :'n_pipe3');
SELECT name FROM users WHERE email = :'e_pipe3';
\echo == done

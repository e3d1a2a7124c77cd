-- pgveil driver matrix, pgbench part 4 (role dba, -t 1): ciphertext only.
-- bytea comes back as \x…, which the shell's echo prints as x….
SELECT email AS got_email, name AS got_name FROM users WHERE id = (SELECT min(id) FROM users) \gset
\shell echo RESULT :got_email
\shell echo RESULT :got_name
SELECT legal_name AS got_name, ssn AS got_ssn FROM phi.member_profile \gset
\shell echo RESULT :got_name
\shell echo RESULT :got_ssn

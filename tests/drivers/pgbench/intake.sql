-- pgveil driver matrix, pgbench part 3 (role intake, -t 1): intake may
-- search member_profile.ssn and reads ciphertext. bytea comes back as \x…,
-- which the shell's echo prints as x….
SELECT count(*) AS n, max(id) AS id FROM phi.member_profile WHERE ssn = :ssn_dana_digits \gset
\shell echo RESULT :n
SELECT legal_name AS got FROM phi.member_profile WHERE id = :id \gset
\shell echo RESULT :got

-- pgveil driver matrix, pgbench part 2 (role clinician, -M extended, -t 1).
\shell echo RESULT step insert
INSERT INTO phi.member_profile (legal_name, date_of_birth, ssn, risk_score) VALUES (:n_dana, :dob_dana, :ssn_dana, 87);
INSERT INTO phi.member_profile (legal_name, date_of_birth, ssn, risk_score) VALUES (:n_eli, :dob_eli, :ssn_eli, 12);
\shell echo RESULT step lookup
SELECT legal_name AS got_name, date_of_birth AS got_dob, risk_score AS got_risk FROM phi.member_profile WHERE ssn = :ssn_dana_digits \gset
\shell echo RESULT :got_name :got_dob :got_risk
\shell echo RESULT step update
UPDATE phi.member_profile SET risk_score = :risk WHERE ssn = :ssn_dana;
\shell echo RESULT step delete
DELETE FROM phi.member_profile WHERE ssn = :ssn_eli;
SELECT 1 / (count(*) = 0)::int FROM phi.member_profile WHERE ssn = :ssn_eli;
\shell echo RESULT step read_plaintext
SELECT legal_name AS got_name, date_of_birth AS got_dob, ssn AS got_ssn, risk_score AS got_risk FROM phi.member_profile \gset
\shell echo RESULT :got_name :got_dob :got_ssn :got_risk
\shell echo RESULT step transaction_rollback
BEGIN;
INSERT INTO phi.member_profile (legal_name, date_of_birth, ssn, risk_score) VALUES (:n_fay, :dob_fay, :ssn_fay, 5);
ROLLBACK;
SELECT 1 / (count(*) = 0)::int FROM phi.member_profile WHERE ssn = :ssn_fay;

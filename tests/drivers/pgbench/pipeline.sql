-- pgveil driver matrix, pgbench part 6 (role calmony_app, -M extended or
-- prepared, -t 1): a pipeline (one Sync at \endpipeline) with a statement
-- pgveil refuses in the middle. The transaction committed inside the
-- pipeline before it stands, the statement after it is skipped, and
-- pgbench aborts the client on the error (PostgreSQL 15's pgbench retries
-- only serialization failures and deadlocks).
\startpipeline
BEGIN;
INSERT INTO users (email, name) VALUES (:e_pipe1, :n_pipe1);
COMMIT;
SELECT id FROM users ORDER BY email;
INSERT INTO users (email, name) VALUES (:e_pipe2, :n_pipe2);
\endpipeline

-- pgveil driver matrix, pgbench part 7 (role calmony_app, -M prepared,
-- -t 1): after the failed pipeline, a pipeline that works, and the rows.
\startpipeline
INSERT INTO users (email, name) VALUES (:e_pipe3, :n_pipe3);
SELECT 1 / (count(*) = 1)::int FROM users WHERE email = :e_pipe1;
SELECT 1 / (count(*) = 0)::int FROM users WHERE email = :e_pipe2;
\endpipeline
SELECT name AS got FROM users WHERE email = :e_pipe3 \gset
\shell echo RESULT :got

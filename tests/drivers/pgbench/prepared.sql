-- pgveil driver matrix, pgbench part 5 (role calmony_app, -M prepared,
-- -t 12): every statement is parsed once per connection as a named
-- statement and executed 12 times. pgbench cannot build a new string per
-- transaction, so every round inserts the same value (:e_p, :n_p).
INSERT INTO users (email, name) VALUES (:e_p, :n_p);
SELECT count(*) AS n FROM users WHERE email = :e_p_upper \gset
SELECT name AS got FROM users WHERE email = :e_p_upper LIMIT 1 \gset
SELECT count(*) AS named FROM pg_prepared_statements WHERE statement LIKE '%users%' \gset
\shell echo RESULT :n :got :named

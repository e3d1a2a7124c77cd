-- One round of matrix.sql's prepared_many step (i = 0 … 11): the same insert
-- and lookup every round, with new literals; it includes itself again until
-- i reaches 11.
\set e_p :tag '-p' :i '@example.com'
\set n_p :tag ' Prepared ' :i
\set e_P :TAG '-P' :i '@EXAMPLE.COM'
INSERT INTO users (email, name) VALUES (:'e_p', :'n_p');
SELECT name FROM users WHERE email = :'e_P';
SELECT :i + 1 AS i, :i < 11 AS more \gset
\if :more
\ir prepared_one.sql
\endif

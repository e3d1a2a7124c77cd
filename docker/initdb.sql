-- First-start setup of the compose PostgreSQL (run by the postgres image's
-- docker-entrypoint-initdb.d as the superuser). Plain roles, no superuser
-- and no extension for pgveil; demo passwords only.
CREATE ROLE calmony_app LOGIN PASSWORD 'calmony_app';
CREATE ROLE dba LOGIN PASSWORD 'dba';
CREATE ROLE pgveil_keys LOGIN PASSWORD 'pgveil_keys';
CREATE DATABASE app OWNER calmony_app;
CREATE DATABASE pgveil_keys OWNER pgveil_keys;
\connect app calmony_app
\i /pgveil/calmony.sql
GRANT USAGE ON SCHEMA public, phi TO dba;
GRANT SELECT ON ALL TABLES IN SCHEMA public, phi TO dba;

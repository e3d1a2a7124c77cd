-- Schema for policies/calmony.yaml: every protected column is bytea (raw
-- envelope) or text (printable envelope), every blind index is bytea.
-- Used by `pgveil demo` and the integration tests.

CREATE SCHEMA IF NOT EXISTS phi;

CREATE TABLE public.users (
    id         bigserial PRIMARY KEY,
    email      bytea,
    email_bidx bytea,
    name       text,          -- protected, stored as printable envelope
    plan       text NOT NULL DEFAULT 'free',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX users_email_bidx ON public.users (email_bidx);

CREATE TABLE public.pay_customers (
    id               bigserial PRIMARY KEY,
    org_id           bigint NOT NULL,
    email            bytea,
    email_bidx       bytea,
    name             bytea,
    phone            bytea,
    line1            bytea,
    line2            bytea,
    city             bytea,
    state            bytea,
    postal_code      bytea,
    postal_code_bidx bytea,
    country          bytea
);
CREATE INDEX pay_customers_email_bidx ON public.pay_customers (email_bidx);

CREATE TABLE public.pay_payment_methods (
    id            bigserial PRIMARY KEY,
    customer_id   bigint,
    billing_name  bytea,
    billing_email bytea
);

CREATE TABLE public.pay_webhook_endpoints (
    id     bigserial PRIMARY KEY,
    url    text NOT NULL,
    secret bytea
);

CREATE TABLE phi.member_profile (
    id            bigserial PRIMARY KEY,
    legal_name    bytea,
    date_of_birth bytea,
    ssn           bytea,
    ssn_bidx      bytea,
    risk_score    bytea,
    note          text
);
CREATE INDEX member_profile_ssn_bidx ON phi.member_profile (ssn_bidx);

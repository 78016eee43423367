-- The lab's databases, run by `psql` as postgres over the local socket. Idempotent.
-- psql variables: mlflow_password.
SELECT format('CREATE ROLE mlflow LOGIN PASSWORD %L', :'mlflow_password')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mlflow') \gexec
SELECT 'CREATE DATABASE mlflow OWNER mlflow'
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'mlflow') \gexec
SELECT 'CREATE DATABASE quant'
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'quant') \gexec
\connect quant
CREATE TABLE IF NOT EXISTS users (
    id          bigserial PRIMARY KEY,
    username    text NOT NULL UNIQUE,
    email       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- Sessions go with their user.
CREATE TABLE IF NOT EXISTS user_sessions (
    id          bigserial PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client      text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now()
);
-- Portfolios do not: deleting a user who still has one is refused by PostgreSQL.
CREATE TABLE IF NOT EXISTS portfolios (
    id             bigserial PRIMARY KEY,
    user_id        bigint NOT NULL REFERENCES users (id),
    name           text NOT NULL,
    base_currency  char(3) NOT NULL DEFAULT 'USD',
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS trades (
    id            bigserial PRIMARY KEY,
    portfolio_id  bigint NOT NULL REFERENCES portfolios (id) ON DELETE CASCADE,
    symbol        text NOT NULL,
    side          text NOT NULL CHECK (side IN ('buy', 'sell')),
    quantity      numeric(18, 4) NOT NULL,
    price         numeric(18, 4) NOT NULL,
    executed_at   timestamptz NOT NULL DEFAULT now()
);
-- Append-heavy and purged by hand; autovacuum is off here, so dead tuples stay for VACUUM to find.
CREATE TABLE IF NOT EXISTS audit_log (
    id       bigserial PRIMARY KEY,
    user_id  bigint,
    action   text NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
) WITH (autovacuum_enabled = false);

-- Realistic rows, once: 40 traders, a portfolio or two each, a few thousand trades.
INSERT INTO users (username, email, created_at)
SELECT format('%s.%s', f, l), format('%s.%s@quant.example', f, l), now() - (n || ' days')::interval
  FROM (SELECT f, l, row_number() OVER () AS n
          FROM unnest(ARRAY['alice','bruno','chen','dana','emeka','fatima','giulia','hiro']) AS f,
               unnest(ARRAY['martin','okafor','silva','nguyen','kowalski']) AS l) AS people
 WHERE NOT EXISTS (SELECT 1 FROM users)
ON CONFLICT (username) DO NOTHING;
INSERT INTO portfolios (user_id, name, base_currency)
SELECT u.id, p.name, p.ccy FROM users u
  CROSS JOIN (VALUES ('core', 'USD'), ('fx-carry', 'EUR')) AS p (name, ccy)
 WHERE u.username LIKE '%.%' AND (p.name = 'core' OR u.id % 3 = 0)
   AND NOT EXISTS (SELECT 1 FROM portfolios);
INSERT INTO trades (portfolio_id, symbol, side, quantity, price, executed_at)
SELECT p.id, (ARRAY['AAPL','MSFT','ES=F','EURUSD','BTC-USD','TLT'])[1 + (g % 6)],
       CASE WHEN g % 2 = 0 THEN 'buy' ELSE 'sell' END,
       1 + (g % 50), 10 + (g % 400) * 1.37, now() - (g || ' minutes')::interval
  FROM portfolios p CROSS JOIN generate_series(1, 40) AS g
 WHERE NOT EXISTS (SELECT 1 FROM trades);
INSERT INTO user_sessions (user_id, client)
SELECT id, 'web' FROM users WHERE username LIKE '%.%'
   AND NOT EXISTS (SELECT 1 FROM user_sessions);

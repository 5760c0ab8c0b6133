-- Sample clinic database used by `pgward demo` and the tests.
-- Entirely synthetic: names, SSNs and e-mail addresses are generated.
CREATE TABLE clinics (
    id   integer PRIMARY KEY,
    name text NOT NULL,
    city text NOT NULL
);
INSERT INTO clinics VALUES
    (1, 'Riverside Family Practice', 'Springfield'),
    (2, 'Lakeview Pediatrics', 'Shelbyville'),
    (3, 'Hilltop Cardiology', 'Capital City');

CREATE TABLE patients (
    id         integer PRIMARY KEY,
    clinic_id  integer NOT NULL REFERENCES clinics(id),
    name       text NOT NULL,
    ssn        text NOT NULL,
    email      text NOT NULL,
    dob        date NOT NULL,
    phone      text NOT NULL
);
INSERT INTO patients
SELECT i,
       1 + i % 3,
       (ARRAY['Ada','Ben','Cleo','Dev','Elif','Femi','Gus','Hana','Ivo','Jun'])[1 + i % 10]
         || ' ' ||
       (ARRAY['Okafor','Lindqvist','Moreau','Tanaka','Silva','Novak','Haddad','Kowalski'])[1 + (i / 10) % 8],
       lpad((100 + i % 800)::text, 3, '0') || '-' || lpad((10 + i % 89)::text, 2, '0') || '-' || lpad((1000 + i * 7 % 9000)::text, 4, '0'),
       'patient' || i || '@example.org',
       date '1940-01-01' + (i * 3761 % 29000),
       '555-' || lpad((i * 37 % 10000)::text, 4, '0')
FROM generate_series(1, 1000) AS i;

CREATE TABLE visits (
    id         integer PRIMARY KEY,
    patient_id integer NOT NULL REFERENCES patients(id),
    clinic_id  integer NOT NULL REFERENCES clinics(id),
    visited_at timestamptz NOT NULL,
    reason     text NOT NULL,
    notes      text
);
INSERT INTO visits
SELECT v,
       1 + v % 1000,
       1 + (1 + v % 1000) % 3,
       timestamptz '2024-01-01' + (v * 97 % 700) * interval '1 day',
       (ARRAY['check-up','flu','follow-up','vaccination','lab results'])[1 + v % 5],
       'clinical note ' || v
FROM generate_series(1, 3000) AS v;

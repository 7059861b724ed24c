-- Large contents in parts: a blob over 1 MiB keeps an empty `data` in
-- `blobs` (its `size` says how long it is) and its bytes here, in order.
-- One row holding 50 MB would be copied whole three times on its way in
-- (the query's argument, the driver's bind, the row record); parts keep
-- each copy to 1 MiB. Blobs stored inline before this stay as they are.
CREATE TABLE blob_parts (
    sha256  TEXT NOT NULL REFERENCES blobs(sha256) ON DELETE CASCADE,
    seq     BIGINT NOT NULL,
    data    BYTEA NOT NULL,
    PRIMARY KEY (sha256, seq)
);

# Build: docker build -t mailroom .
# Run:   docker run -v ./mailroom.toml:/etc/mailroom/mailroom.toml -v mailroom-data:/var/lib/mailroom mailroom
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin mailroom

FROM debian:bookworm-slim
# The system CA roots: IMAP and SMTP certificates are verified against them.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/mailroom --create-home mailroom
COPY --from=build /src/target/release/mailroom /usr/local/bin/mailroom
COPY config/mailroom.toml /etc/mailroom/mailroom.toml
USER mailroom
WORKDIR /var/lib/mailroom
ENV MAILROOM_CONFIG=/etc/mailroom/mailroom.toml \
    MAILROOM_DATABASE_URL=sqlite:///var/lib/mailroom/mailroom.db \
    MAILROOM_CHANNELS__SPOOL__PATH=/var/lib/mailroom/spool
STOPSIGNAL SIGTERM
ENTRYPOINT ["mailroom"]
CMD ["run"]

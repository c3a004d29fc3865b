# Images of `cmq` (hub, standalone, dispatch) and `cmq-operator`, from one build:
#   docker build --target cmq -t ghcr.io/cmq-io/cmq:0.1.0 .
#   docker build --target operator -t ghcr.io/cmq-io/cmq-operator:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p cmq -p cmq-operator \
 && cp target/release/cmq target/release/cmq-operator /usr/local/bin/

# Non-root (uid 65532), no shell: what the pod specs of the operator expect.
FROM gcr.io/distroless/cc-debian12:nonroot AS cmq
COPY --from=build /usr/local/bin/cmq /usr/local/bin/cmq
EXPOSE 1883 8083 8883 8084 9090
ENTRYPOINT ["/usr/local/bin/cmq"]
CMD ["standalone"]

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /usr/local/bin/cmq-operator /usr/local/bin/cmq-operator
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/cmq-operator"]

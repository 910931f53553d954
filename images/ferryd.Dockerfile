# ferryd, the sidecar (the `daprd` container that the injector adds to meshed pods): one static
# binary and the CA bundle that its https:// URL and HTTPEndpoint calls verify against, on
# `scratch`, as user 65532.
#
# images/build.sh (`make images`) builds it in one of two ways:
#   With Docker (the default target, `image`): the `build` stage compiles the workspace in the
#   Rust image. Context: the repository root.
#       docker build -f images/ferryd.Dockerfile -t ghcr.io/ferry-dev/ferryd:dev .
#   Offline (target `prebuilt`): copies a static binary that cargo built on the host, and pulls
#   no base image at all (`scratch` is none). Context: a directory holding `ferryd` and
#   `ca-certificates.crt`.
#       buildah bud -f images/ferryd.Dockerfile --target prebuilt \
#         -t ghcr.io/ferry-dev/ferryd:dev DIR
# The stages are ordered so that `--target prebuilt` never reaches the `build` stage.

FROM scratch AS runtime
LABEL org.opencontainers.image.title="ferryd" \
      org.opencontainers.image.description="Ferry's sidecar: Dapr-compatible service invocation" \
      org.opencontainers.image.source="https://github.com/ferry-dev/ferry" \
      org.opencontainers.image.licenses="Apache-2.0"
# rustls-native-certs would find the bundle there anyway; the variable makes it explicit.
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# 65532 is distroless' "nonroot"; a numeric user lets runAsNonRoot be checked without /etc/passwd.
USER 65532:65532
ENTRYPOINT ["/ferryd"]

FROM runtime AS prebuilt
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY ferryd /ferryd

# Byte for byte the same in all three Dockerfiles, so Docker builds the workspace once and
# reuses the layer for the other two images.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# +crt-static on the gnu target links glibc statically: no musl toolchain and no extra rustup
# target. The host's triple is used, so an arm64 Docker host builds an arm64 image.
RUN --mount=type=cache,id=ferry-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=ferry-cargo-target,target=/src/target,sharing=locked \
    triple="$(rustc -vV | sed -n 's/^host: //p')" \
 && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$triple" \
      --bin ferryd --bin ferry-operator --bin ferry-injector \
 && mkdir -p /out \
 && cp "target/$triple/release/ferryd" "target/$triple/release/ferry-operator" \
       "target/$triple/release/ferry-injector" /etc/ssl/certs/ca-certificates.crt /out/

FROM runtime AS image
COPY --from=build /out/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/ferryd /ferryd

# ferry-injector, the sidecar injector (a mutating admission webhook): one static binary and a
# CA bundle (the API server is trusted through the service account's CA; the bundle serves any
# other TLS peer), on `scratch`, as user 65532.
#
# images/build.sh (`make images`) builds it in one of two ways:
#   With Docker (the default target, `image`): the `build` stage compiles the workspace in the
#   Rust image. Context: the repository root.
#       docker build -f images/ferry-injector.Dockerfile -t ghcr.io/ferry-dev/ferry-injector:dev .
#   Offline (target `prebuilt`): copies a static binary that cargo built on the host, and pulls
#   no base image at all (`scratch` is none). Context: a directory holding `ferry-injector` and
#   `ca-certificates.crt`.
#       buildah bud -f images/ferry-injector.Dockerfile --target prebuilt \
#         -t ghcr.io/ferry-dev/ferry-injector:dev DIR
# The stages are ordered so that `--target prebuilt` never reaches the `build` stage.

FROM scratch AS runtime
LABEL org.opencontainers.image.title="ferry-injector" \
      org.opencontainers.image.description="Ferry's sidecar injector (mutating admission webhook)" \
      org.opencontainers.image.source="https://github.com/ferry-dev/ferry" \
      org.opencontainers.image.licenses="Apache-2.0"
# rustls-native-certs would find the bundle there anyway; the variable makes it explicit.
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# 65532 is distroless' "nonroot"; a numeric user lets runAsNonRoot be checked without /etc/passwd.
USER 65532:65532
ENTRYPOINT ["/ferry-injector"]

FROM runtime AS prebuilt
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY ferry-injector /ferry-injector

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
COPY --from=build /out/ferry-injector /ferry-injector

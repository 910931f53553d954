//! Generates the Sentry contract's Rust types and gRPC client and server from our `.proto`
//! (in `api/proto`, next to the other wire contracts). protox compiles it in Rust, so the build
//! needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = "../api/proto";
    let proto = "../api/proto/dapr/proto/sentry/v1/sentry.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], [root])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}

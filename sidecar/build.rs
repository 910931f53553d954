//! Generates Dapr's runtime gRPC API (`dapr.proto.runtime.v1.Dapr`, as far as Ferry serves it)
//! from our `.proto` files in `api/proto`. protox compiles them in Rust, so the build needs no
//! `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = "../api/proto";
    let protos = [
        "../api/proto/dapr/proto/common/v1/common.proto",
        "../api/proto/dapr/proto/runtime/v1/dapr.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let descriptors = protox::compile(protos, [root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}

//! Compiles the etcd v3 wire API and cairn's own protocols (`proto/cairnpb/`)
//! with protox (a pure-Rust protobuf compiler), so `cargo build` needs no
//! system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/mvccpb/kv.proto",
        "proto/authpb/auth.proto",
        "proto/etcdserverpb/rpc.proto",
        "proto/v3lockpb/v3lock.proto",
        "proto/v3electionpb/v3election.proto",
        "proto/cairnpb/internal.proto",
        "proto/cairnpb/peer.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    // The same descriptors for the HTTP gateway's JSON mapping (src/http/json.rs).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("cairn_descriptors.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;

    // The Watch service's server side once more, declared by hand so that it
    // streams `grpc::watch::WatchReply` (the bytes of a WatchResponse, with
    // each batch's events encoded once for all its watchers) instead of
    // WatchResponse. Same package, service and method: same route.
    use tonic_prost_build::manual::{Builder, Method, Service};
    let watch = Service::builder()
        .name("Watch")
        .package("etcdserverpb")
        .method(
            Method::builder()
                .name("watch")
                .route_name("Watch")
                .input_type("crate::proto::etcdserverpb::WatchRequest")
                .output_type("crate::grpc::watch::WatchReply")
                .codec_path("tonic_prost::ProstCodec")
                .client_streaming()
                .server_streaming()
                .build(),
        )
        .build();
    // The KV service's server side once more, so that Range answers with
    // `grpc::range::RangeReply` (a RangeResponse whose records are dropped
    // one by one as they are encoded). Same package, service and methods.
    let kv_method = |name: &str, route: &str, input: &str, output: &str| {
        Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!("crate::proto::etcdserverpb::{input}"))
            .output_type(output)
            .codec_path("tonic_prost::ProstCodec")
            .build()
    };
    let pb = |t: &str| format!("crate::proto::etcdserverpb::{t}");
    let kv = Service::builder()
        .name("KV")
        .package("etcdserverpb")
        .method(kv_method(
            "range",
            "Range",
            "RangeRequest",
            "crate::grpc::range::RangeReply",
        ))
        .method(kv_method("put", "Put", "PutRequest", &pb("PutResponse")))
        .method(kv_method(
            "delete_range",
            "DeleteRange",
            "DeleteRangeRequest",
            &pb("DeleteRangeResponse"),
        ))
        .method(kv_method("txn", "Txn", "TxnRequest", &pb("TxnResponse")))
        .method(kv_method(
            "compact",
            "Compact",
            "CompactionRequest",
            &pb("CompactionResponse"),
        ))
        .build();
    Builder::new().build_client(false).compile(&[watch, kv]);
    Ok(())
}

//! `cairn-bench`: the load generator and etcd comparison (see
//! [`cairn::bench`] and docs/performance.md).

fn main() -> std::process::ExitCode {
    cairn::bench::cli::main()
}

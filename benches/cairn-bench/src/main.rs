//! `cairn-bench`: the load generator and etcd comparison (see the
//! [`cairn_bench`] library and docs/performance.md).

fn main() -> std::process::ExitCode {
    cairn_bench::cli::main()
}

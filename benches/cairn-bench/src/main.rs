//! `cairn-bench`: the load generator and etcd comparison (see the
//! [`cairn_bench`] library and docs/performance.md).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cairn_bench::cli::main()
}

//! The process's memory allocator: mimalloc. Batches are often allocated on one thread (a
//! decoder on the CPU pool) and freed on another (the task that consumed them); glibc's per-thread
//! arenas then keep taking fresh pages from the kernel, which costs page faults and zeroing on every
//! batch. mimalloc reuses freed memory across threads.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

//! The synchronisation layer of the protocol model.
//!
//! The model's locks, condition variables, atomics and threads come from
//! here: the standard library's normally, loom's when built with
//! `RUSTFLAGS="--cfg loom"`, so the same model runs on real threads and
//! under the model checker. (Locks from the `spin` crate would be invisible
//! to loom, which is why the model does not use them.)

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(loom)]
pub use loom::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard};
#[cfg(loom)]
pub use loom::thread;

#[cfg(not(loom))]
pub use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
pub use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard};
#[cfg(not(loom))]
pub use std::thread;

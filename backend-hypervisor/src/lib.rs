//! Hypervisor backend (placeholder until its issue lands).
#![no_std]

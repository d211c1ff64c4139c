//! Unit tests of the CPU-side operations.

use super::*;
use crate::frame::ZERO_PFN;
use crate::mm::Mm;
use crate::task::Task;
use crate::vma::File;
use crate::Errno;
use crate::Machine;
use std::sync::Arc;

const RW: VmFlags = VmFlags::READ.union(VmFlags::WRITE);

fn setup() -> (Arc<Machine>, Arc<Mm>, Task) {
    let m = Machine::new();
    let mm = Mm::new(&m);
    (m, mm, Task::new())
}

#[test]
fn read_fault_maps_the_zero_page_and_write_breaks_it() {
    let (_m, mm, t) = setup();
    let a = mm.mmap_anon(None, PAGE_SIZE, RW).unwrap();
    assert_eq!(mm.read_i32s(&t, a, 1).unwrap(), [0]);
    assert_eq!(mm.pte_at(a).1, Some(ZERO_PFN));
    mm.write_i32s(&t, a, &[5]).unwrap();
    let (p, pfn) = mm.pte_at(a);
    assert!(matches!(p, Pte::Present { write: true, .. }));
    assert_ne!(pfn, Some(ZERO_PFN));
    assert_eq!(mm.read_i32s(&t, a, 1).unwrap(), [5]);
}

#[test]
fn mappings_end_within_the_user_address_space() {
    let (_m, mm, _t) = setup();
    let top = hmm_core::TASK_SIZE;
    assert_eq!(
        mm.mmap_anon(Some(top - PAGE_SIZE), PAGE_SIZE, RW),
        Ok(top - PAGE_SIZE)
    );
    assert_eq!(mm.mmap_anon(Some(top), PAGE_SIZE, RW), Err(Errno::ENOMEM));
    assert_eq!(
        mm.mmap_anon(Some(1 << 47), PAGE_SIZE, RW),
        Err(Errno::ENOMEM)
    );
    let last = 0u64.wrapping_sub(PAGE_SIZE);
    assert_eq!(mm.mmap_anon(Some(last), PAGE_SIZE, RW), Err(Errno::ENOMEM));
    assert_eq!(mm.mmap_anon(None, 1 << 48, RW), Err(Errno::ENOMEM));
    assert_eq!(
        mm.mmap_anon(None, (1 << 47) - MMAP_BASE, RW),
        Err(Errno::ENOMEM)
    );
    assert_eq!(mm.vma_list().len(), 1);
}

#[test]
fn fork_shares_copy_on_write() {
    let (m, mm, t) = setup();
    let a = mm.mmap_anon(None, 2 * PAGE_SIZE, RW).unwrap();
    mm.write_i32s(&t, a, &[1]).unwrap();
    let used = m.frames.in_use();
    let child = mm.fork(&t);
    assert_eq!(mm.pte_at(a).1, child.pte_at(a).1, "shared after fork");
    assert!(matches!(mm.pte_at(a).0, Pte::Present { write: false, .. }));
    child.write_i32s(&t, a, &[2]).unwrap();
    assert_ne!(mm.pte_at(a).1, child.pte_at(a).1, "child broke COW");
    assert_eq!(mm.read_i32s(&t, a, 1).unwrap(), [1]);
    assert_eq!(child.read_i32s(&t, a, 1).unwrap(), [2]);
    // The parent is now the only user: it reuses its page in place.
    let before = mm.pte_at(a).1;
    mm.write_i32s(&t, a, &[3]).unwrap();
    assert_eq!(mm.pte_at(a).1, before);
    drop(child);
    assert_eq!(m.frames.in_use(), used);
}

#[test]
fn munmap_frees_pages_and_tables() {
    let (m, mm, t) = setup();
    let a = mm.mmap_anon(None, PMD_SIZE, RW).unwrap();
    mm.touch(&t, a, PMD_SIZE, true).unwrap();
    assert_eq!(m.frames.in_use(), 512);
    mm.munmap(&t, a, PMD_SIZE).unwrap();
    assert_eq!(m.frames.in_use(), 0);
    assert_eq!(mm.pte_at(a).0, Pte::None);
    assert_eq!(mm.read_bytes(&t, a, &mut [0u8; 1]), Err(Errno::EFAULT));
}

#[test]
fn thp_fault_maps_a_pmd_and_partial_dontneed_splits_it() {
    let (_m, mm, t) = setup();
    let a = mm.mmap_anon(None, PMD_SIZE, RW).unwrap();
    mm.madvise_hugepage(a, PMD_SIZE).unwrap();
    mm.write_i32s(&t, a + PAGE_SIZE, &[9]).unwrap();
    assert!(matches!(mm.pte_at(a).0, Pte::Present { huge: true, .. }));
    mm.madvise_dontneed(&t, a, PAGE_SIZE).unwrap();
    assert_eq!(mm.pte_at(a).0, Pte::None);
    assert!(matches!(
        mm.pte_at(a + PAGE_SIZE).0,
        Pte::Present { huge: false, .. }
    ));
    assert_eq!(mm.read_i32s(&t, a + PAGE_SIZE, 1).unwrap(), [9]);
}

#[test]
fn mremap_moves_pages_with_their_data() {
    let (_m, mm, t) = setup();
    let a = mm.mmap_anon(None, 4 * PAGE_SIZE, RW).unwrap();
    mm.write_i32s(&t, a + PAGE_SIZE, &[1, 2, 3]).unwrap();
    let pfn = mm.pte_at(a + PAGE_SIZE).1;
    let b = a + (1 << 30);
    assert_eq!(mm.mremap(&t, a, 4 * PAGE_SIZE, b, false), Ok(b));
    assert_eq!(mm.pte_at(b + PAGE_SIZE).1, pfn);
    assert_eq!(mm.read_i32s(&t, b + PAGE_SIZE, 3).unwrap(), [1, 2, 3]);
    assert_eq!(mm.read_bytes(&t, a, &mut [0u8; 1]), Err(Errno::EFAULT));
}

#[test]
fn mprotect_write_protects_and_refaults_writable() {
    let (_m, mm, t) = setup();
    let a = mm.mmap_anon(None, PAGE_SIZE, RW).unwrap();
    mm.write_i32s(&t, a, &[1]).unwrap();
    mm.mprotect(a, PAGE_SIZE, VmFlags::READ).unwrap();
    assert!(matches!(mm.pte_at(a).0, Pte::Present { write: false, .. }));
    assert_eq!(mm.write_i32s(&t, a, &[2]), Err(Errno::EFAULT));
    mm.mprotect(a, PAGE_SIZE, RW).unwrap();
    mm.write_i32s(&t, a, &[2]).unwrap();
    assert_eq!(mm.read_i32s(&t, a, 1).unwrap(), [2]);
    assert_eq!(mm.vma_list().len(), 1);
}

#[test]
fn swap_out_and_in_round_trips_data() {
    let (m, mm, t) = setup();
    let a = mm.mmap_anon(None, 2 * PAGE_SIZE, RW).unwrap();
    mm.write_i32s(&t, a, &[11]).unwrap();
    assert_eq!(mm.swap_out(&t, a, 2 * PAGE_SIZE), Ok(1));
    assert!(matches!(mm.pte_at(a).0, Pte::Swap { write: true, .. }));
    assert_eq!(m.swap_used(), 1);
    assert_eq!(mm.read_i32s(&t, a, 1).unwrap(), [11]);
    assert_eq!(m.swap_used(), 0);
}

#[test]
fn migration_moves_data_to_new_frames() {
    let (_m, mm, t) = setup();
    let a = mm.mmap_anon(None, 2 * PAGE_SIZE, RW).unwrap();
    mm.write_i32s(&t, a, &[21]).unwrap();
    mm.write_i32s(&t, a + PAGE_SIZE, &[22]).unwrap();
    let old = mm.pte_at(a).1;
    assert_eq!(mm.migrate(&t, a, 2 * PAGE_SIZE, None), Ok(2));
    assert_ne!(mm.pte_at(a).1, old);
    assert_eq!(mm.read_i32s(&t, a, 1).unwrap(), [21]);
    assert_eq!(mm.read_i32s(&t, a + PAGE_SIZE, 1).unwrap(), [22]);
}

#[test]
fn private_file_mapping_copies_on_write() {
    let (m, mm, t) = setup();
    let f = File::new(m.frames.clone(), 0, 0);
    f.pwrite(0, &7i32.to_ne_bytes()).unwrap();
    let a = mm.mmap_file(None, PAGE_SIZE, RW, false, &f, 0).unwrap();
    assert_eq!(mm.read_i32s(&t, a, 1).unwrap(), [7]);
    mm.write_i32s(&t, a, &[8]).unwrap();
    let mut b = [0u8; 4];
    f.pread(0, &mut b);
    assert_eq!(i32::from_ne_bytes(b), 7, "the file is untouched");
    assert_eq!(mm.read_i32s(&t, a, 1).unwrap(), [8]);
}

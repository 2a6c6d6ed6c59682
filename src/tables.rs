//! Tables of a row per object, emptied as a pass goes: how they give back their room, and how
//! the heap gives back what they and the listing's pages freed.

/// Gives back the room of `table`, taken from its end, once more than a few thousand rows of
/// it are unused: a table of a row per object is held beside the one its rows go to (the
/// listing beside the downloads, the downloads beside the manifest), and halving it only when
/// half of it is unused would leave that half held beside the other table's growth. The room
/// of a large table is mapped memory, so its tail goes back without a copy.
pub fn give_back<T>(table: &mut Vec<T>) {
    const SLACK: usize = 8192;
    if table.capacity() - table.len() > SLACK {
        table.shrink_to_fit();
    }
}

/// Gives the memory freed (a listing's pages, a pass's listings and plans) back to the system.
/// glibc keeps freed memory in its heaps for later use: a recurring sync or a mount would
/// otherwise stay, between passes, at the size its biggest pass needed, and a pass would plan
/// beside the room its listing's pages left (measurements: docs/PERFORMANCE.md, "A refresh's
/// unchanged parts").
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the heaps to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

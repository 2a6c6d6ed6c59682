//! Tables of a row per object, emptied as a pass goes: how they give back their room.

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

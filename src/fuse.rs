//! The thin fuser adapter: one [`Vfs`] call and one reply per FUSE method. Only this module knows
//! fuser's request and reply types.
//!
//! `open` may wait for a download, so it is answered from a task on the async runtime; the FUSE
//! threads keep serving other requests meanwhile; so are an open for writing, a `setattr` and a
//! rename (which may download first) and `fsync` (which waits for an upload). With no writeable
//! mount, the file system is mounted read-only and the kernel answers writes with EROFS itself.
//!
//! Passthrough: where the kernel offers it (and we may use it: it needs CAP_SYS_ADMIN), every
//! open file is backed by its complete cache file, so reads never reach this process. One backing
//! id serves all open handles of an inode: the kernel binds an inode to one backing file, and
//! `vfs` gives a changed object a new inode, so they always hold the same bytes.

use crate::metrics;
use crate::vfs::{Attr, FsError, Kind, Opened, SetAttr, SetTime, Vfs};
use fuser::{
    BackingId, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;
use std::time::SystemTime;

/// Backing ids of open files: one per inode, kept alive by the handles using it.
#[derive(Default)]
struct Backing {
    by_handle: HashMap<u64, Arc<BackingId>>,
    by_inode: HashMap<u64, Weak<BackingId>>,
    /// Handles open without passthrough, per inode: while there are any, the kernel refuses
    /// passthrough opens of that inode.
    served: HashMap<u64, usize>,
}

pub struct FuseFs {
    vfs: Arc<Vfs>,
    /// Whether passthrough may be used (the kernel has the last word, in `init`).
    allow_passthrough: bool,
    passthrough: bool,
    backing: Arc<Mutex<Backing>>,
    runtime: tokio::runtime::Handle,
    /// How long the kernel may cache attributes and entries: changes show within this.
    ttl: Duration,
    uid: u32,
    gid: u32,
}

impl FuseFs {
    pub fn new(
        vfs: Arc<Vfs>,
        runtime: tokio::runtime::Handle,
        ttl: Duration,
        allow_passthrough: bool,
    ) -> Self {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Self {
            vfs,
            allow_passthrough,
            passthrough: false,
            backing: Arc::default(),
            runtime,
            ttl,
            uid,
            gid,
        }
    }

    /// [`FuseFs::file_attr`] for a task that outlives `&self`.
    fn attr_maker(&self) -> impl Fn(&Attr) -> FileAttr + Send + 'static {
        let (uid, gid) = (self.uid, self.gid);
        move |a| file_attr(a, uid, gid)
    }

    fn file_attr(&self, a: &Attr) -> FileAttr {
        file_attr(a, self.uid, self.gid)
    }
}

fn file_attr(a: &Attr, uid: u32, gid: u32) -> FileAttr {
    let (kind, perm, nlink) = match a.kind {
        Kind::Dir => (FileType::Directory, a.perm, 2),
        Kind::File => (FileType::RegularFile, a.perm, 1),
    };
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind,
        perm,
        nlink,
        uid,
        gid,
        rdev: 0,
        flags: 0,
        blksize: 1 << 20,
    }
}

/// The attributes of a negative entry: node 0 is how FUSE says "no such name".
fn missing() -> FileAttr {
    let at = std::time::UNIX_EPOCH;
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: at,
        mtime: at,
        ctime: at,
        crtime: at,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        flags: 0,
        blksize: 0,
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

/// A backing id for `opened`, shared with the other handles of the same inode (the kernel binds
/// an inode to one backing file; one inode is one version, see `vfs`); `None` when the kernel
/// refuses.
fn backing_for(
    backing: &Mutex<Backing>,
    vfs: &Vfs,
    ino: u64,
    opened: &Opened,
    open_backing: impl FnOnce(&std::fs::File) -> std::io::Result<BackingId>,
) -> Option<Arc<BackingId>> {
    let mut table = backing.lock();
    if table.served.get(&ino).is_some_and(|&n| n > 0) {
        return None;
    }
    let id = match table.by_inode.get(&ino) {
        Some(weak) if weak.strong_count() > 0 => weak.upgrade()?,
        _ => {
            let file = vfs.handle_file(opened.fh)?;
            match open_backing(&file) {
                Ok(id) => {
                    let id = Arc::new(id);
                    table.by_inode.insert(ino, Arc::downgrade(&id));
                    id
                }
                Err(e) => {
                    tracing::debug!(error = %e, "passthrough refused; serving reads");
                    return None;
                }
            }
        }
    };
    table.by_handle.insert(opened.fh, id.clone());
    Some(id)
}

/// Logs a failed download or upload (the errno alone does not say which key).
fn log_failure(e: &FsError) {
    match e {
        FsError::Download(err) => tracing::error!(key = %err.key, "read failed: {}", err.reason),
        FsError::Upload(err) => tracing::error!("{err}"),
        _ => {}
    }
}

/// Answers a lookup. A name that does not exist gets a negative entry: the kernel remembers it
/// as missing for as long as it trusts an entry, so `cp`'s stat of each new file's name and its
/// open(O_CREAT) cost one lookup, not two, and a search path probed again costs none.
fn reply_entry(
    found: Result<Attr, FsError>,
    ttl: &Duration,
    attr: &impl Fn(&Attr) -> FileAttr,
    reply: ReplyEntry,
) {
    match found {
        Ok(a) => reply.entry(ttl, &attr(&a), Generation(0)),
        Err(FsError::NotFound) => reply.entry(ttl, &missing(), Generation(0)),
        Err(e) => {
            log_failure(&e);
            reply.error(errno(&e))
        }
    }
}

fn reply_empty(result: Result<(), FsError>, reply: ReplyEmpty) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => {
            log_failure(&e);
            reply.error(errno(&e))
        }
    }
}

/// Opens directory `ino`, whose entries the tree now holds. The kernel may keep what it reads
/// of it: a change through the file system drops that, and a refresh tells it which
/// directories changed.
fn reply_opendir(vfs: &Vfs, ino: u64, reply: ReplyOpen) {
    match vfs.getattr(ino) {
        Ok(a) if a.kind == Kind::Dir => reply.opened(
            FileHandle(0),
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
        ),
        Ok(_) => reply.error(Errno::ENOTDIR),
        Err(e) => reply.error(errno(&e)),
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(at) => SetTime::At(at),
    })
}

fn reply_open(
    vfs: &Vfs,
    table: &Mutex<Backing>,
    passthrough: bool,
    ino: u64,
    result: Result<Opened, FsError>,
    reply: ReplyOpen,
) {
    match result {
        Ok(opened) => {
            let flags = if opened.keep_cache {
                FopenFlags::FOPEN_KEEP_CACHE
            } else {
                FopenFlags::empty()
            };
            let fh = FileHandle(opened.fh);
            // A file still downloading is served: its reads may have to wait.
            let id = (passthrough && !opened.partial)
                .then(|| backing_for(table, vfs, ino, &opened, |f| reply.open_backing(f)))
                .flatten();
            match id {
                // Reads go to the backing file's own page cache; the kernel refuses
                // passthrough opens that also ask to keep a FUSE page cache.
                Some(id) => reply.opened_passthrough(fh, FopenFlags::empty(), &id),
                None => {
                    *table.lock().served.entry(ino).or_default() += 1;
                    reply.opened(fh, flags)
                }
            }
        }
        Err(e) => {
            log_failure(&e);
            reply.error(errno(&e))
        }
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Stack depth 2 lets the cache itself sit on a stacked file system (e.g. overlayfs).
        self.passthrough = self.allow_passthrough
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(2).is_ok();
        // Directory listings carry each entry's attributes, so a first walk costs one request
        // per directory rather than one per file (the kernel picks plain listings where no
        // lookups follow).
        let plus = InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO;
        let _ = config.add_capabilities(plus);
        tracing::debug!(passthrough = self.passthrough, "FUSE session ready");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _op = metrics::OpTimer::start("lookup");
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        let (ttl, attr) = (self.ttl, self.attr_maker());
        match self.vfs.lookup_now(parent.0, name) {
            Some(found) => reply_entry(found, &ttl, &attr, reply),
            // Not listed yet: looked for in the bucket, off the FUSE threads.
            None => {
                let (vfs, name) = (self.vfs.clone(), name.to_owned());
                self.runtime.spawn(async move {
                    let _op = _op;
                    let found = vfs.lookup(parent.0, &name).await;
                    reply_entry(found, &ttl, &attr, reply);
                });
            }
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, _nlookup: u64) {
        self.vfs.forget(ino.0);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _op = metrics::OpTimer::start("getattr");
        match self.vfs.getattr(ino.0) {
            Ok(a) => reply.attr(&self.ttl, &self.file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _op = metrics::OpTimer::start("open");
        let (table, passthrough) = (self.backing.clone(), self.passthrough);
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            // May download the file first, off the FUSE threads.
            let vfs = self.vfs.clone();
            let truncate = flags.0 & libc::O_TRUNC != 0;
            self.runtime.spawn(async move {
                let _op = _op;
                let result = vfs.open_write(ino.0, truncate).await;
                reply_open(&vfs, &table, passthrough, ino.0, result, reply);
            });
            return;
        }
        match self.vfs.open_now(ino.0) {
            Some(result) => reply_open(&self.vfs, &table, passthrough, ino.0, result, reply),
            // Waits for a small file to download, off the FUSE threads.
            None => {
                let vfs = self.vfs.clone();
                self.runtime.spawn(async move {
                    let _op = _op;
                    let result = vfs.open(ino.0).await;
                    reply_open(&vfs, &table, passthrough, ino.0, result, reply);
                });
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _op = metrics::OpTimer::start("read");
        let done = |result: Result<Vec<u8>, FsError>, reply: ReplyData| match result {
            Ok(data) => reply.data(&data),
            Err(e) => {
                if let FsError::Download(err) = &e {
                    tracing::error!(key = %err.key, "read failed: {}", err.reason);
                }
                reply.error(errno(&e))
            }
        };
        match self.vfs.read_now(fh.0, offset, size) {
            Some(result) => done(result, reply),
            // Waits for its range to download, off the FUSE threads.
            None => {
                let vfs = self.vfs.clone();
                self.runtime.spawn(async move {
                    let _op = _op;
                    done(vfs.read(fh.0, offset, size).await, reply);
                });
            }
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _op = metrics::OpTimer::start("release");
        self.vfs.release(fh.0);
        let mut table = self.backing.lock();
        if table.by_handle.remove(&fh.0).is_none()
            && let Some(n) = table.served.get_mut(&ino.0)
        {
            *n -= 1;
            if *n == 0 {
                table.served.remove(&ino.0);
            }
        }
        if table
            .by_inode
            .get(&ino.0)
            .is_some_and(|id| id.strong_count() == 0)
        {
            table.by_inode.remove(&ino.0);
        }
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let _op = metrics::OpTimer::start("create");
        let Some(name) = name.to_str() else {
            return reply.error(Errno::EINVAL);
        };
        let (attr, opened) = match self.vfs.create(parent.0, name, mode & !umask) {
            Ok(created) => created,
            Err(e) => return reply.error(errno(&e)),
        };
        let (fh, attr) = (FileHandle(opened.fh), self.file_attr(&attr));
        let id = self
            .passthrough
            .then(|| {
                backing_for(&self.backing, &self.vfs, attr.ino.0, &opened, |f| {
                    reply.open_backing(f)
                })
            })
            .flatten();
        match id {
            Some(id) => reply.created_passthrough(
                &self.ttl,
                &attr,
                Generation(0),
                fh,
                FopenFlags::empty(),
                &id,
            ),
            None => {
                *self.backing.lock().served.entry(attr.ino.0).or_default() += 1;
                reply.created(&self.ttl, &attr, Generation(0), fh, FopenFlags::empty())
            }
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _op = metrics::OpTimer::start("write");
        match self.vfs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _op = metrics::OpTimer::start("setattr");
        let set = SetAttr {
            size,
            mode,
            uid,
            gid,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        let (vfs, ttl, attr_of) = (self.vfs.clone(), self.ttl, self.attr_maker());
        self.runtime.spawn(async move {
            let _op = _op;
            match vfs.setattr(ino.0, &set).await {
                Ok(a) => reply.attr(&ttl, &attr_of(&a)),
                Err(e) => {
                    log_failure(&e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _op = metrics::OpTimer::start("mkdir");
        let Some(name) = name.to_str() else {
            return reply.error(Errno::EINVAL);
        };
        match self.vfs.mkdir(parent.0, name, mode & !umask) {
            Ok(a) => reply.entry(&self.ttl, &self.file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = metrics::OpTimer::start("unlink");
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        reply_empty(self.vfs.remove(parent.0, name, false), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = metrics::OpTimer::start("rmdir");
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        let Some(ino) = self.vfs.unlisted_child(parent.0, name) else {
            return reply_empty(self.vfs.remove(parent.0, name, true), reply);
        };
        // Empty in the tree only once listed: listed first, off the FUSE threads.
        let (vfs, name) = (self.vfs.clone(), name.to_owned());
        self.runtime.spawn(async move {
            let _op = _op;
            let removed = match vfs.list_dir(ino).await {
                Ok(()) => vfs.remove(parent.0, &name, true),
                Err(e) => Err(e),
            };
            reply_empty(removed, reply);
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _op = metrics::OpTimer::start("rename");
        let (Some(name), Some(newname)) = (name.to_str(), newname.to_str()) else {
            return reply.error(Errno::EINVAL);
        };
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let (vfs, name, newname) = (self.vfs.clone(), name.to_owned(), newname.to_owned());
        // May download what it moves first, off the FUSE threads.
        self.runtime.spawn(async move {
            let _op = _op;
            let result = vfs
                .rename(parent.0, &name, newparent.0, &newname, noreplace)
                .await;
            reply_empty(result, reply);
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _op = metrics::OpTimer::start("fsync");
        // Waits for the upload, off the FUSE threads.
        let vfs = self.vfs.clone();
        self.runtime
            .spawn(async move { reply_empty(vfs.fsync(fh.0).await, reply) });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _op = metrics::OpTimer::start("opendir");
        if self.vfs.dir_ready(ino.0) {
            return reply_opendir(&self.vfs, ino.0, reply);
        }
        // Not listed yet: listed first, off the FUSE threads.
        let vfs = self.vfs.clone();
        self.runtime.spawn(async move {
            let _op = _op;
            match vfs.list_dir(ino.0).await {
                Ok(()) => reply_opendir(&vfs, ino.0, reply),
                Err(e) => {
                    log_failure(&e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _op = metrics::OpTimer::start("readdir");
        let read = self.vfs.read_dir(ino.0, offset, |child, at, kind, name| {
            let kind = match kind {
                Kind::Dir => FileType::Directory,
                Kind::File => FileType::RegularFile,
            };
            reply.add(INodeNo(child), at + 1, kind, name)
        });
        match read {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _op = metrics::OpTimer::start("readdirplus");
        let read = self.vfs.read_dir(ino.0, offset, |child, at, _, name| {
            // Gone since the listing was taken: the next read of the directory says.
            let Ok(attr) = self.vfs.getattr(child) else {
                return false;
            };
            let full = reply.add(
                INodeNo(child),
                at + 1,
                name,
                &self.ttl,
                &self.file_attr(&attr),
                Generation(0),
            );
            // The kernel now holds the entry as if looked up (but "." and "..").
            if !full && at >= 2 {
                self.vfs.looked_up(child);
            }
            full
        });
        match read {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do at a close (writes go to the cache file; the upload starts at the
        // release): ENOSYS tells the kernel never to send a flush again, one round trip less
        // per close.
        reply.error(Errno::ENOSYS);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        // No extended attributes are kept: ENOSYS tells the kernel never to ask again (it
        // answers "not supported" itself). Else it asks for `security.capability` before every
        // write to a file, one round trip more per file written.
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    /// No ioctl is supported: it is "not a terminal" (ENOTTY), what `isatty` asks on every
    /// Python `open`, rather than fuser's default ENOSYS with a warning logged each time.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _op = metrics::OpTimer::start("statfs");
        let (files, dirs) = self.vfs.counts();
        reply.statfs(0, 0, 0, files + dirs, 0, 1 << 20, 255, 1 << 20);
    }
}

//! [`SimFs`], the twin of the real file system for tests: it keeps files
//! and directories in memory and remembers, for each file, the content
//! that was synced and, for each directory, the entries that were synced.
//! [`SimFs::power_cut`] drops everything else, as a machine that loses
//! its power does:
//!
//! - a file's data reverts to what its last `sync_data` made durable (or,
//!   with [`SimFs::with_torn_writes`], keeps a seeded prefix of the
//!   unsynced tail, sometimes followed by zeros: a write cut short, as
//!   disks leave them);
//! - a directory's entries revert to its last `sync_dir`: a file created in
//!   a directory that was not synced since disappears (with its data,
//!   synced or not), a rename is undone, a removed file comes back.
//!
//! Faults: [`SimFs::fail_sync`] makes a chosen sync fail with `EIO`, and
//! [`SimFs::set_capacity`] makes a small disk, whose writes fail with
//! `ENOSPC` once the files hold that many bytes.
//!
//! It is compiled into the library (not only under `cfg(test)`) so that
//! integration tests can run a store on it too; a node never uses it.
//!
//! Model limits: a failed sync makes nothing durable but leaves the data
//! to a later sync (Linux may instead drop the dirty pages, which is why
//! the store refuses changes after a failed sync); a rename between two
//! directories is durable in each of them by its own sync.

use super::{Fs, FsFile};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

const EIO: i32 = 5;
const ENOSPC: i32 = 28;
const ROOT: u64 = 0;

/// A sync to make fail (see [`SimFs::fail_sync`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncFault {
    /// The n-th sync from now, of any file or directory (1: the next one).
    Nth(u64),
    /// The next sync of this file or directory (as it was opened).
    Path(PathBuf),
}

/// The in-memory twin of the file system. A cheap-clone handle: clones
/// share the files, and belong to the same boot of the simulated machine.
#[derive(Clone)]
pub struct SimFs {
    /// A std Mutex, not a tokio one: it is held for one short operation
    /// on memory, never across an `.await`.
    state: Arc<Mutex<State>>,
    /// The boot this handle (and the files it opened) belongs to: after a
    /// power cut, they fail, as the process that held them is gone.
    boot: u64,
}

impl fmt::Debug for SimFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFs").field("boot", &self.boot).finish()
    }
}

impl Default for SimFs {
    fn default() -> Self {
        SimFs::new()
    }
}

#[derive(Debug)]
struct State {
    boot: u64,
    nodes: HashMap<u64, Node>,
    next_id: u64,
    /// The state of the seeded generator that chooses torn tails; `None`
    /// drops every unsynced tail whole.
    torn: Option<u64>,
    /// Syncs so far, and the injected failures still to come.
    syncs: u64,
    faults: Vec<Fault>,
    /// The bytes all files may hold together.
    capacity: Option<u64>,
}

#[derive(Debug)]
enum Fault {
    At(u64),
    Path(PathBuf),
}

#[derive(Debug)]
enum Node {
    File(FileNode),
    Dir(DirNode),
}

#[derive(Debug, Default)]
struct FileNode {
    data: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug, Default)]
struct DirNode {
    entries: BTreeMap<String, u64>,
    durable: BTreeMap<String, u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Append,
    Write,
    Read,
}

/// A file opened on the twin; it follows its file through renames and
/// removes, as an open file descriptor does.
#[derive(Debug)]
struct SimFile {
    fs: SimFs,
    id: u64,
    path: PathBuf,
    mode: Mode,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

fn names(path: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_string_lossy().into_owned()),
            Component::ParentDir => {
                return Err(invalid(format!("{}: `..` in a path", path.display())));
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// splitmix64: a small seeded generator, the same on every platform.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl State {
    fn dir(&self, id: u64, path: &Path) -> io::Result<&DirNode> {
        match self.nodes.get(&id) {
            Some(Node::Dir(d)) => Ok(d),
            Some(Node::File(_)) => Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{}: not a directory", path.display()),
            )),
            None => Err(not_found(path)),
        }
    }

    fn dir_mut(&mut self, id: u64, path: &Path) -> io::Result<&mut DirNode> {
        self.dir(id, path)?;
        match self.nodes.get_mut(&id) {
            Some(Node::Dir(d)) => Ok(d),
            _ => Err(not_found(path)),
        }
    }

    fn file_mut(&mut self, id: u64, path: &Path) -> io::Result<&mut FileNode> {
        match self.nodes.get_mut(&id) {
            Some(Node::File(f)) => Ok(f),
            Some(Node::Dir(_)) => Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{}: is a directory", path.display()),
            )),
            None => Err(not_found(path)),
        }
    }

    fn lookup(&self, path: &Path) -> io::Result<u64> {
        let mut at = ROOT;
        for name in names(path)? {
            at = *self
                .dir(at, path)?
                .entries
                .get(&name)
                .ok_or_else(|| not_found(path))?;
        }
        Ok(at)
    }

    /// The directory that holds `path`'s entry, and the entry's name.
    fn parent(&self, path: &Path) -> io::Result<(u64, String)> {
        let mut all = names(path)?;
        let name = all
            .pop()
            .ok_or_else(|| invalid(format!("{}: no file name", path.display())))?;
        let mut at = ROOT;
        for part in all {
            at = *self
                .dir(at, path)?
                .entries
                .get(&part)
                .ok_or_else(|| not_found(path))?;
        }
        self.dir(at, path)?;
        Ok((at, name))
    }

    fn add(&mut self, path: &Path, node: Node) -> io::Result<u64> {
        let (dir, name) = self.parent(path)?;
        let id = self.next_id;
        self.next_id += 1;
        self.nodes.insert(id, node);
        self.dir_mut(dir, path)?.entries.insert(name, id);
        Ok(id)
    }

    /// Bytes of file data on the simulated disk.
    fn used(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| match n {
                Node::File(f) => f.data.len() as u64,
                Node::Dir(_) => 0,
            })
            .sum()
    }

    /// Bytes free on the simulated disk.
    fn room(&self) -> u64 {
        match self.capacity {
            Some(capacity) => capacity.saturating_sub(self.used()),
            None => u64::MAX,
        }
    }

    /// Counts a sync of `path`; an error if an injected fault says so.
    fn sync_allowed(&mut self, path: &Path) -> io::Result<()> {
        self.syncs += 1;
        let syncs = self.syncs;
        let hit = self.faults.iter().position(|f| match f {
            Fault::At(n) => *n == syncs,
            Fault::Path(p) => p == path,
        });
        match hit {
            Some(i) => {
                self.faults.remove(i);
                Err(io::Error::from_raw_os_error(EIO))
            }
            None => Ok(()),
        }
    }

    /// What the disk holds of a file after a power cut.
    fn survivor(torn: &mut Option<u64>, file: &FileNode) -> Vec<u8> {
        let durable = &file.durable;
        let Some(seed) = torn else {
            return durable.clone();
        };
        if !file.data.starts_with(durable) || file.data.len() == durable.len() {
            // Not a pure append since the last sync: the old content.
            return durable.clone();
        }
        let tail = &file.data[durable.len()..];
        let kept = (next_random(seed) % (tail.len() as u64 + 1)) as usize;
        let zeros = match next_random(seed) % 2 {
            0 => 0,
            _ => (next_random(seed) % ((tail.len() - kept) as u64 + 1)) as usize,
        };
        let mut out = durable.clone();
        out.extend_from_slice(&tail[..kept]);
        out.resize(out.len() + zeros, 0);
        out
    }
}

impl SimFs {
    /// An empty twin whose power cuts drop every unsynced write whole.
    pub fn new() -> SimFs {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Node::Dir(DirNode::default()));
        SimFs {
            state: Arc::new(Mutex::new(State {
                boot: 0,
                nodes,
                next_id: ROOT + 1,
                torn: None,
                syncs: 0,
                faults: Vec::new(),
                capacity: None,
            })),
            boot: 0,
        }
    }

    /// An empty twin whose power cuts keep a prefix of each file's
    /// unsynced tail, sometimes followed by zeros, chosen from `seed`.
    pub fn with_torn_writes(seed: u64) -> SimFs {
        let fs = SimFs::new();
        fs.lock().torn = Some(seed);
        fs
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every operation leaves the state whole before it can panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state, if this handle's boot is the current one.
    fn live(&self) -> io::Result<MutexGuard<'_, State>> {
        let state = self.lock();
        if state.boot != self.boot {
            return Err(io::Error::other(
                "simulated power cut: the process that held this handle is gone",
            ));
        }
        Ok(state)
    }

    /// Cuts the power: drops every write, create, rename and remove that
    /// was not synced (see the module's documentation), ends every handle
    /// and open file of the boot that ends, and forgets the injected sync
    /// failures. Returns a handle for the next boot.
    pub fn power_cut(&self) -> SimFs {
        let mut state = self.lock();
        let state = &mut *state;
        for node in state.nodes.values_mut() {
            match node {
                Node::Dir(d) => d.entries = d.durable.clone(),
                Node::File(f) => {
                    let kept = State::survivor(&mut state.torn, f);
                    f.durable = kept.clone();
                    f.data = kept;
                }
            }
        }
        // Files and directories that no durable entry names are gone.
        let mut reachable = HashSet::from([ROOT]);
        let mut todo = vec![ROOT];
        while let Some(id) = todo.pop() {
            if let Some(Node::Dir(d)) = state.nodes.get(&id) {
                for child in d.entries.values() {
                    if reachable.insert(*child) {
                        todo.push(*child);
                    }
                }
            }
        }
        state.nodes.retain(|id, _| reachable.contains(id));
        state.faults.clear();
        state.boot += 1;
        SimFs {
            state: Arc::clone(&self.state),
            boot: state.boot,
        }
    }

    /// Kills the process but not the machine: every handle of this boot
    /// ends, and every write stays (the page cache survives a SIGKILL).
    /// Returns a handle for the next process.
    pub fn kill_process(&self) -> SimFs {
        let mut state = self.lock();
        state.boot += 1;
        SimFs {
            state: Arc::clone(&self.state),
            boot: state.boot,
        }
    }

    /// Makes a sync fail with `EIO`; nothing it would have made durable
    /// becomes so.
    pub fn fail_sync(&self, fault: SyncFault) {
        let mut state = self.lock();
        let fault = match fault {
            SyncFault::Nth(n) => Fault::At(state.syncs + n.max(1)),
            SyncFault::Path(p) => Fault::Path(p),
        };
        state.faults.push(fault);
    }

    /// Makes the disk hold at most `bytes` of file data (`None`: no
    /// limit). A write past it writes what fits, then fails with `ENOSPC`.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock().capacity = bytes;
    }

    /// Bytes of file data on the disk now (written, synced or not).
    pub fn used(&self) -> u64 {
        self.lock().used()
    }

    /// The content of a file that would survive a power cut now, ignoring
    /// whether its directory entry would.
    pub fn durable_content(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut state = self.live()?;
        let id = state.lookup(path)?;
        Ok(state.file_mut(id, path)?.durable.clone())
    }

    fn open(&self, path: &Path, mode: Mode) -> io::Result<Arc<dyn FsFile>> {
        let mut state = self.live()?;
        let id = match state.lookup(path) {
            Ok(id) => {
                state.file_mut(id, path)?;
                id
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && mode != Mode::Read => {
                state.add(path, Node::File(FileNode::default()))?
            }
            Err(e) => return Err(e),
        };
        Ok(Arc::new(SimFile {
            fs: self.clone(),
            id,
            path: path.to_path_buf(),
            mode,
        }))
    }
}

impl Fs for SimFs {
    fn open_append(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        self.open(path, Mode::Append)
    }

    fn open_write(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        self.open(path, Mode::Write)
    }

    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        self.open(path, Mode::Read)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut state = self.live()?;
        let id = state.lookup(path)?;
        Ok(state.file_mut(id, path)?.data.clone())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        match self.live()?.lookup(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.live()?;
        if state.lookup(dir).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: already exists", dir.display()),
            ));
        }
        state.add(dir, Node::Dir(DirNode::default()))?;
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.live()?;
        let id = state.lookup(dir)?;
        Ok(state.dir(id, dir)?.entries.keys().cloned().collect())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.live()?;
        let (from_dir, from_name) = state.parent(from)?;
        let id = *state
            .dir(from_dir, from)?
            .entries
            .get(&from_name)
            .ok_or_else(|| not_found(from))?;
        state.file_mut(id, from)?;
        let (to_dir, to_name) = state.parent(to)?;
        if let Some(&old) = state.dir(to_dir, to)?.entries.get(&to_name) {
            state.file_mut(old, to)?;
        }
        state.dir_mut(from_dir, from)?.entries.remove(&from_name);
        state.dir_mut(to_dir, to)?.entries.insert(to_name, id);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.live()?;
        let (dir, name) = state.parent(path)?;
        let id = *state
            .dir(dir, path)?
            .entries
            .get(&name)
            .ok_or_else(|| not_found(path))?;
        state.file_mut(id, path)?;
        state.dir_mut(dir, path)?.entries.remove(&name);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.live()?;
        let id = state.lookup(dir)?;
        state.dir(id, dir)?;
        state.sync_allowed(dir)?;
        let d = state.dir_mut(id, dir)?;
        d.durable = d.entries.clone();
        Ok(())
    }
}

impl SimFile {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> io::Result<T>) -> io::Result<T> {
        let mut state = self.fs.live()?;
        f(&mut state)
    }

    fn writable(&self) -> io::Result<()> {
        match self.mode {
            Mode::Read => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{}: opened for reading only", self.path.display()),
            )),
            Mode::Append | Mode::Write => Ok(()),
        }
    }
}

impl FsFile for SimFile {
    fn append(&self, buf: &[u8]) -> io::Result<()> {
        self.writable()?;
        self.with(|state| {
            let room = state.room();
            let fits = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
            state
                .file_mut(self.id, &self.path)?
                .data
                .extend_from_slice(&buf[..fits]);
            if fits < buf.len() {
                return Err(io::Error::from_raw_os_error(ENOSPC));
            }
            Ok(())
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.mode != Mode::Write {
            return Err(invalid(format!(
                "{}: a positional write to a file not opened for them",
                self.path.display()
            )));
        }
        self.with(|state| {
            let room = state.room();
            let file = state.file_mut(self.id, &self.path)?;
            let start = usize::try_from(offset).map_err(|_| invalid("offset too large".into()))?;
            let len = file.data.len();
            // What the write may add to the file before the disk is full.
            let limit = len.saturating_add(usize::try_from(room).unwrap_or(usize::MAX));
            let end = start.saturating_add(buf.len()).min(limit);
            if end > len {
                file.data.resize(end, 0);
            }
            if start < end {
                file.data[start..end].copy_from_slice(&buf[..end - start]);
            }
            if end < start.saturating_add(buf.len()) {
                return Err(io::Error::from_raw_os_error(ENOSPC));
            }
            Ok(())
        })
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(|state| {
            let file = state.file_mut(self.id, &self.path)?;
            let bytes = usize::try_from(offset)
                .ok()
                .and_then(|start| file.data.get(start..start.checked_add(buf.len())?))
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "read past the end of the file",
                    )
                })?;
            buf.copy_from_slice(bytes);
            Ok(())
        })
    }

    fn len(&self) -> io::Result<u64> {
        self.with(|state| Ok(state.file_mut(self.id, &self.path)?.data.len() as u64))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.writable()?;
        self.with(|state| {
            let room = state.room();
            let file = state.file_mut(self.id, &self.path)?;
            let len = usize::try_from(len).map_err(|_| invalid("length too large".into()))?;
            if len > file.data.len() && (len - file.data.len()) as u64 > room {
                return Err(io::Error::from_raw_os_error(ENOSPC));
            }
            file.data.resize(len, 0);
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|state| {
            state.file_mut(self.id, &self.path)?;
            state.sync_allowed(&self.path)?;
            let file = state.file_mut(self.id, &self.path)?;
            file.durable = file.data.clone();
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests;

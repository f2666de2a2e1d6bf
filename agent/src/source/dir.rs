//! The standalone source: a directory of ordinary Kubernetes manifests.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file at the top level (hidden files
//! ignored) is parsed, multi-document, and the model holds what the files hold
//! now: a file that vanishes takes its objects with it. Only files that changed
//! are read again, and only objects whose content changed are reported changed.
//! An object defined in several files takes its definition from the last file in
//! name order.
//!
//! Changes are found by comparing the file list with each file's size, mtime and
//! inode, which also sees editors' rename-over saves. The comparison runs as soon
//! as inotify reports a file closed after writing, renamed or deleted in the
//! directory (so a change reaches the maps in milliseconds), and every [`POLL`]
//! in any case (a safety net for filesystems without inotify). Inotify is not
//! asked about plain writes: a reload in the middle of one would see half a file.
//!
//! Files are read and parsed by a pool of worker threads, each result applied as
//! it arrives: a large or hostile file never holds back the changes of the
//! others (parsing is bounded in depth and linear in time, see
//! [`weir_model::parse`]), and a file's old objects stay in force until its new
//! version is parsed whole. Only the first read waits for every file, so that
//! the first compile sees the whole directory.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
    },
    time::{Duration, Instant, SystemTime},
};

use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::inotify::{AddWatchFlags, InitFlags, Inotify},
};
use tracing::warn;
use weir_model::{
    Model, Object, ObjectKey, Problem, ProblemReason,
    merge::{add_to_lists, values_of},
    model::Put,
    parse::PARSE_STACK,
    parse_documents_on,
};

use super::{Changes, Source, SourceError};

const POLL: Duration = Duration::from_millis(100);
/// The largest manifest read (a 100,000-Service directory is about 120 MB).
const MAX_FILE: u64 = 512 << 20;
/// Parsing workers at most (and no more than the machine's cores).
const MAX_WORKERS: usize = 4;

pub struct DirSource {
    path: PathBuf,
    /// Parsed files by name, as applied to the model.
    parsed: BTreeMap<String, ParsedFile>,
    /// Files being read, by name, with the version being read: a result for
    /// another version (the file changed meanwhile) is dropped.
    pending: BTreeMap<String, FileStamp>,
    /// The last read error of each file that has one, warned about once.
    unreadable: BTreeMap<String, String>,
    /// The files defining each object, in name order: the last one's
    /// definition is in force. Mostly one: a vector of shared names, not a
    /// set (a `BTreeSet` allocates a 280-byte node for its first entry).
    definers: BTreeMap<ObjectKey, Vec<Arc<str>>>,
    model: Model,
    /// The first complete read has been returned.
    started: bool,
    /// The last listing error, reported once rather than at every poll.
    last_error: Option<String>,
    /// Wakes the wait early when a file in the directory is written, moved or
    /// deleted; `None` where inotify is unavailable (polling alone then).
    inotify: Option<Inotify>,
    workers: Workers,
}

struct ParsedFile {
    stamp: FileStamp,
    /// The keys of the objects it defines.
    keys: Box<[ObjectKey]>,
    /// Its definitions the model does not hold, by key: those another file's
    /// overrides, and all of a file just read until [`DirSource::settle`]
    /// has taken them. The model holds the definition in force of every
    /// key, so that one is not kept twice.
    held: BTreeMap<ObjectKey, Object>,
}

/// What tells us a file changed without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    name: String,
    len: u64,
    mtime: Option<SystemTime>,
    inode: u64,
}

/// A file to read, or what reading it gave.
struct Job {
    path: PathBuf,
    stamp: FileStamp,
}

struct Done {
    stamp: FileStamp,
    /// Objects and problems; an I/O error (the file is read again later).
    outcome: Result<(BTreeMap<ObjectKey, Object>, Vec<Problem>), String>,
}

/// The parsing pool: jobs in, results out. Dropping it ends the workers.
struct Workers {
    jobs: Sender<Job>,
    done: Receiver<Done>,
}

impl Workers {
    fn start() -> Self {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel();
        let job_rx = Arc::new(Mutex::new(job_rx));
        // Two at least: a large file must not hold back a small one even on one core.
        let n = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, MAX_WORKERS);
        for i in 0..n {
            let (job_rx, done_tx) = (job_rx.clone(), done_tx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("weir-parse-{i}"))
                .stack_size(PARSE_STACK)
                .spawn(move || {
                    loop {
                        let job = job_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok(job) = job else { return };
                        let outcome =
                            crate::memory::with_thread_cache(|| read_file(&job.path, &job.stamp.name));
                        if done_tx
                            .send(Done {
                                stamp: job.stamp,
                                outcome,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            if let Err(e) = spawned {
                warn!(error = %e, "spawning a manifest parser");
            }
        }
        Self { jobs, done }
    }
}

/// Reads and parses one manifest file. Content that is not usable (not UTF-8,
/// too large) is a problem of the file, reported once per version; an I/O error
/// is transient, and the file is read again.
fn read_file(path: &Path, name: &str) -> Result<(BTreeMap<ObjectKey, Object>, Vec<Problem>), String> {
    let unusable = |why: String| {
        let problem = Problem {
            origin: name.to_owned(),
            object: None,
            reason: ProblemReason::Unusable(why),
        };
        Ok((BTreeMap::new(), vec![problem]))
    };
    let file = fs::File::open(path).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len > MAX_FILE {
        return unusable(format!("{len} bytes, more than the {MAX_FILE} read"));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            return unusable(format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ));
        }
    };
    // A large file's parsing threads keep a thread cache too.
    let parsed = parse_documents_on(&text, name, |part| crate::memory::with_thread_cache(part));
    let (objects, problems) = (parsed.objects, parsed.problems);
    // Only what the model reads is kept (a Pod's env, a Node's images go).
    Ok((
        objects.into_iter().map(|o| (o.key(), o.trimmed())).collect(),
        problems,
    ))
}

impl DirSource {
    pub fn new(path: PathBuf) -> Self {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .and_then(|i| {
                let events = AddWatchFlags::IN_CLOSE_WRITE
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_MOVED_FROM
                    | AddWatchFlags::IN_DELETE;
                i.add_watch(&path, events).map(|_| i)
            })
            .map_err(|e| warn!(path = %path.display(), error = %e, "no inotify on the source directory: polling only"))
            .ok();
        Self {
            path,
            parsed: BTreeMap::new(),
            pending: BTreeMap::new(),
            unreadable: BTreeMap::new(),
            definers: BTreeMap::new(),
            model: Model::new(),
            started: false,
            last_error: None,
            inotify,
            workers: Workers::start(),
        }
    }

    /// Sleeps up to `wait`, less if inotify reports a change in the directory.
    fn wait_for_change(&self, wait: Duration) {
        let Some(inotify) = &self.inotify else {
            std::thread::sleep(wait);
            return;
        };
        let ms = PollTimeout::from(wait.as_millis().min(u128::from(u16::MAX)) as u16);
        let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(inotify), PollFlags::POLLIN)];
        if poll(&mut fds, ms).is_ok_and(|n| n > 0) {
            // The events only say "look again"; drain them.
            while inotify.read_events().is_ok_and(|events| !events.is_empty()) {}
        }
    }

    /// The manifest files, sorted by name so that a reload is deterministic (and
    /// a later file wins an object defined twice).
    fn scan(&self) -> Result<Vec<FileStamp>, SourceError> {
        use std::os::unix::fs::MetadataExt as _;
        let io = |source| SourceError::Io {
            path: self.path.clone(),
            source,
        };
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.path).map_err(io)? {
            let entry = entry.map_err(io)?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !is_manifest(&name) {
                continue;
            }
            // Follows symlinks (a ConfigMap volume is a tree of them); a file that
            // vanished since the listing is simply not there.
            let Ok(meta) = fs::metadata(entry.path()) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            files.push(FileStamp {
                name,
                len: meta.len(),
                mtime: meta.modified().ok(),
                inode: meta.ino(),
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(files)
    }

    /// Hands every new or changed file to the workers, and forgets the files
    /// that are gone (their keys go into `touched`).
    fn submit(&mut self, files: &[FileStamp], touched: &mut Vec<ObjectKey>) {
        let listed: BTreeMap<&str, &FileStamp> = files.iter().map(|f| (f.name.as_str(), f)).collect();
        let gone: Vec<String> = self
            .parsed
            .keys()
            .filter(|name| !listed.contains_key(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.forget(&name, touched);
        }
        self.pending.retain(|name, _| listed.contains_key(name.as_str()));
        self.unreadable
            .retain(|name, _| listed.contains_key(name.as_str()));
        for file in files {
            let current = self.parsed.get(&file.name).map(|p| &p.stamp);
            if current == Some(file) || self.pending.get(&file.name) == Some(file) {
                continue;
            }
            let job = Job {
                path: self.path.join(&file.name),
                stamp: file.clone(),
            };
            if self.workers.jobs.send(job).is_ok() {
                self.pending.insert(file.name.clone(), file.clone());
            }
        }
    }

    /// Drops a file's objects from the index (the model is brought in line by
    /// [`Self::settle`]).
    fn forget(&mut self, name: &str, touched: &mut Vec<ObjectKey>) {
        if let Some(file) = self.parsed.remove(name) {
            for key in file.keys {
                if let Some(files) = self.definers.get_mut(&key) {
                    files.retain(|f| **f != *name);
                }
                touched.push(key);
            }
        }
    }

    /// Applies one worker's result, if it is for the version still wanted.
    fn apply(&mut self, done: Done, touched: &mut Vec<ObjectKey>, problems: &mut Vec<Problem>) {
        let name = done.stamp.name.clone();
        if self.pending.get(&name) != Some(&done.stamp) {
            return;
        }
        self.pending.remove(&name);
        let (objects, file_problems) = match done.outcome {
            Ok(read) => read,
            Err(error) => {
                // Read again at the next look; said once per distinct error.
                if self.unreadable.get(&name) != Some(&error) {
                    warn!(file = %self.path.join(&name).display(), error, "manifest unreadable: its objects are kept as they were; reading it again");
                    self.unreadable.insert(name, error);
                }
                return;
            }
        };
        self.unreadable.remove(&name);
        problems.extend(file_problems);
        self.forget(&name, touched);
        let file: Arc<str> = name.as_str().into();
        let defines = objects.keys().map(|key| (key.clone(), file.clone())).collect();
        add_to_lists(&mut self.definers, defines, |key, files| {
            warn!(object = %key, files = ?files, "object defined in several files: the last one's definition wins");
        });
        touched.extend(objects.keys().cloned());
        self.parsed.insert(
            name,
            ParsedFile {
                stamp: done.stamp,
                keys: objects.keys().cloned().collect(),
                held: objects,
            },
        );
    }

    /// Brings the model to what the parsed files hold for `touched` (in any
    /// order, repeats included); the keys whose object changed.
    fn settle(&mut self, mut touched: Vec<ObjectKey>) -> BTreeSet<ObjectKey> {
        // Sorted once (a file's keys are a sorted run already), and the
        // changed keys found in order: a set built in order is built
        // bottom-up, where an insert searches the tree from its root.
        touched.sort();
        touched.dedup();
        // Each key's file in force, by a walk of the index if many.
        let winners: Vec<Option<Arc<str>>> = values_of(&touched, &self.definers)
            .map(|(_, files)| files.and_then(|files| files.last()).cloned())
            .collect();
        let mut changed = Vec::new();
        // The objects to put, and beside them their keys and files.
        let (mut objects, mut putting) = (Vec::new(), Vec::new());
        for (key, winner) in touched.into_iter().zip(winners) {
            let Some(winner) = winner else {
                self.definers.remove(&key);
                if self.model.remove(&key).is_some() {
                    changed.push(key);
                }
                continue;
            };
            // Not held: the model has the winner's definition already (its
            // file was not read again).
            if let Some(object) = self.parsed.get_mut(&*winner).and_then(|f| f.held.remove(&key)) {
                putting.push((key, winner.clone()));
                objects.push((object, winner));
            }
        }
        for ((key, winner), done) in putting.into_iter().zip(self.model.put_all(objects)) {
            match done {
                Put::Unchanged(_) => continue,
                Put::Inserted => {}
                // The definition it replaces is still another file's: that
                // file holds it again, in force should the winner drop the key.
                Put::Replaced(old) => {
                    if old.origin != winner
                        && self
                            .definers
                            .get(&key)
                            .is_some_and(|files| files.contains(&old.origin))
                        && let Some(file) = self.parsed.get_mut(&*old.origin)
                    {
                        file.held.entry(key.clone()).or_insert(old.object);
                    }
                }
            }
            changed.push(key);
        }
        // Two runs in order (removed, put): collecting sorts them by a
        // merge and builds the set bottom-up.
        changed.into_iter().collect()
    }
}

fn is_manifest(name: &str) -> bool {
    !name.starts_with('.')
        && Path::new(name)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}

impl Source for DirSource {
    fn next(&mut self, timeout: Duration) -> Result<Option<Changes>, SourceError> {
        let deadline = Instant::now() + timeout;
        let mut touched = Vec::new();
        let mut problems = Vec::new();
        loop {
            match self.scan() {
                Ok(files) => {
                    self.last_error = None;
                    self.submit(&files, &mut touched);
                }
                // A directory that cannot be listed is not an empty cluster: keep
                // what the maps hold and say so, once per distinct error.
                Err(e) => {
                    let message = e.to_string();
                    if self.last_error.as_ref() != Some(&message) {
                        self.last_error = Some(message);
                        return Err(e);
                    }
                }
            }
            // The first read waits for every file; later ones take what is done.
            let listed = self.last_error.is_none();
            while !self.pending.is_empty() {
                let done = if !self.started && listed {
                    self.workers
                        .done
                        .recv()
                        .map_err(|_| RecvTimeoutError::Disconnected)
                } else {
                    self.workers
                        .done
                        .try_recv()
                        .map_err(|_| RecvTimeoutError::Timeout)
                };
                match done {
                    Ok(done) => self.apply(done, &mut touched, &mut problems),
                    Err(_) => break,
                }
            }
            let first = !self.started && listed && self.pending.is_empty();
            let changed = self.settle(std::mem::take(&mut touched));
            if first || (self.started && (!changed.is_empty() || !problems.is_empty())) {
                self.started = true;
                return Ok(Some(Changes {
                    objects: changed,
                    problems,
                    listed: first,
                }));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = POLL.min(deadline - now);
            if self.pending.is_empty() {
                self.wait_for_change(wait);
            } else {
                // A result is due: take it as soon as it comes.
                match self.workers.done.recv_timeout(wait) {
                    Ok(done) => self.apply(done, &mut touched, &mut problems),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
                }
            }
        }
    }

    fn model(&self) -> &Model {
        &self.model
    }

    fn pack(&mut self) {
        self.model.pack();
    }

    fn describe(&self) -> String {
        format!("dir:{}", self.path.display())
    }

    /// A directory is read whole at once: every kind is listed once it is.
    fn listed(&self, _kind: weir_model::Kind) -> bool {
        self.started
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn tempdir(tag: &str) -> Dir {
        let path = std::env::temp_dir().join(format!("weir-dir-source-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("mkdir");
        Dir(path)
    }

    /// The changes of successive `next` calls, merged, up to the first merge
    /// that satisfies `done` (or a deadline: then what came).
    /// Reads changes until `done` holds. The deadline only bounds a failure:
    /// a debug build parsing 20,000 Services on a loaded 2-core machine (CI
    /// runs builds beside the tests) has taken more than 5 s.
    fn until(source: &mut DirSource, done: impl Fn(&Changes) -> bool) -> Changes {
        let mut all = Changes::default();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(&all) && Instant::now() < deadline {
            if let Some(c) = source.next(Duration::from_millis(200)).expect("scan") {
                all.objects.extend(c.objects);
                all.problems.extend(c.problems);
            }
        }
        all
    }

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: NAME, namespace: default}\nspec:\n  clusterIP: 10.96.0.1\n  ports: [{port: 80}]\n";

    fn service(name: &str) -> String {
        SVC.replace("NAME", name)
    }

    #[test]
    fn reads_manifests_reloads_on_change_and_forgets_vanished_files() {
        let dir = tempdir("reload");
        fs::write(
            dir.0.join("a.yaml"),
            format!("{}---\n{}", service("a1"), service("a2")),
        )
        .expect("write");
        fs::write(dir.0.join("b.json"), r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"b"},"spec":{"clusterIP":"10.96.0.2","ports":[{"port":80}]}}"#).expect("write");
        fs::write(dir.0.join(".hidden.yaml"), service("hidden")).expect("write");
        fs::write(dir.0.join("notes.txt"), service("txt")).expect("write");
        let mut source = DirSource::new(dir.0.clone());

        let first = source.next(Duration::ZERO).expect("scan").expect("first read");
        assert_eq!(source.model().services().count(), 3, "{:?}", source.model());
        assert_eq!(first.objects.len(), 3, "everything is new: {:?}", first.objects);
        assert!(first.problems.is_empty(), "{:?}", first.problems);
        assert!(
            source.next(Duration::from_millis(150)).expect("scan").is_none(),
            "no change, no snapshot"
        );

        fs::remove_file(dir.0.join("a.yaml")).expect("rm");
        fs::write(dir.0.join("c.yml"), "kind: [broken").expect("write");
        // Results arrive as they are ready: the removal may come before the parse.
        let second = until(&mut source, |c| !c.problems.is_empty());
        let names: Vec<_> = source
            .model()
            .services()
            .map(|(k, _, _)| k.name.clone())
            .collect();
        assert_eq!(names, ["b"]);
        let gone: Vec<_> = second.objects.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(
            gone,
            ["a1", "a2"],
            "the vanished file's objects changed, b did not"
        );
        assert_eq!(second.problems.len(), 1, "{:?}", second.problems);
        assert!(
            second.problems[0].origin.starts_with("c.yml"),
            "{}",
            second.problems[0]
        );
    }

    #[test]
    fn only_objects_whose_content_changed_are_reported_and_the_last_file_wins() {
        let dir = tempdir("delta");
        let two = |ip: &str| format!("{}---\n{}", service("x"), service("y").replace("10.96.0.1", ip));
        fs::write(dir.0.join("a.yaml"), two("10.96.0.2")).expect("write");
        let mut source = DirSource::new(dir.0.clone());
        source.next(Duration::ZERO).expect("scan").expect("first read");

        fs::write(dir.0.join("a.yaml"), two("10.96.0.3")).expect("write");
        let changes = source
            .next(Duration::from_secs(1))
            .expect("scan")
            .expect("changed");
        let names: Vec<_> = changes.objects.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["y"], "x was rewritten as it was");

        // x defined again in a later file: that definition wins, and goes with it.
        fs::write(
            dir.0.join("b.yaml"),
            service("x").replace("10.96.0.1", "10.96.0.9"),
        )
        .expect("write");
        let changes = source
            .next(Duration::from_secs(1))
            .expect("scan")
            .expect("changed");
        assert_eq!(
            changes
                .objects
                .iter()
                .map(|k| k.name.as_str())
                .collect::<Vec<_>>(),
            ["x"]
        );
        let cluster_ip = |source: &DirSource| {
            let (_, svc, origin) = source
                .model()
                .services()
                .find(|(k, _, _)| k.name == "x")
                .expect("x");
            (svc.cluster_ips()[0].to_string(), origin.to_owned())
        };
        assert_eq!(cluster_ip(&source), ("10.96.0.9".to_owned(), "b.yaml".to_owned()));

        // The overridden definition changes: nothing in force does.
        fs::write(
            dir.0.join("a.yaml"),
            two("10.96.0.4").replace("10.96.0.1", "10.96.0.5"),
        )
        .expect("write");
        let changes = until(&mut source, |c| !c.objects.is_empty());
        let names: Vec<_> = changes.objects.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["y"], "x is still b.yaml's");
        assert_eq!(cluster_ip(&source), ("10.96.0.9".to_owned(), "b.yaml".to_owned()));

        // The winner goes: the earlier file's latest definition is in force.
        fs::remove_file(dir.0.join("b.yaml")).expect("rm");
        source
            .next(Duration::from_secs(1))
            .expect("scan")
            .expect("changed");
        assert_eq!(cluster_ip(&source), ("10.96.0.5".to_owned(), "a.yaml".to_owned()));

        // A later file takes x, then drops it from its content: a.yaml's again.
        fs::write(
            dir.0.join("c.yaml"),
            service("x").replace("10.96.0.1", "10.96.0.7"),
        )
        .expect("write");
        until(&mut source, |c| !c.objects.is_empty());
        assert_eq!(cluster_ip(&source), ("10.96.0.7".to_owned(), "c.yaml".to_owned()));
        fs::write(dir.0.join("c.yaml"), service("z")).expect("write");
        let changes = until(&mut source, |c| c.objects.len() >= 2);
        let names: Vec<_> = changes.objects.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["x", "z"]);
        assert_eq!(cluster_ip(&source), ("10.96.0.5".to_owned(), "a.yaml".to_owned()));
    }

    /// A later file of more objects than the directory held so far takes
    /// the index and the model's tree in one rebuild each (`add_to_lists`,
    /// `Model::put_all`): what it overrides is kept, and in force again
    /// when it goes.
    #[test]
    fn a_large_later_file_overrides_by_rebuilding_and_gives_back_when_gone() {
        let dir = tempdir("large");
        fs::write(dir.0.join("a.yaml"), service("x")).expect("write");
        let mut source = DirSource::new(dir.0.clone());
        source.next(Duration::ZERO).expect("scan").expect("first read");
        let ip = |source: &DirSource, name: &str| {
            let (_, svc, origin) = source
                .model()
                .services()
                .find(|(k, _, _)| k.name == name)
                .expect("defined");
            (svc.cluster_ips()[0].to_string(), origin.to_owned())
        };
        let three = ["w", "x", "y"]
            .map(|name| service(name).replace("10.96.0.1", "10.96.0.9"))
            .join("---\n");
        fs::write(dir.0.join("b.yaml"), three).expect("write");
        let changes = until(&mut source, |c| c.objects.len() >= 3);
        let names: Vec<_> = changes.objects.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["w", "x", "y"]);
        for name in ["w", "x", "y"] {
            assert_eq!(ip(&source, name), ("10.96.0.9".to_owned(), "b.yaml".to_owned()));
        }
        fs::remove_file(dir.0.join("b.yaml")).expect("rm");
        let changes = until(&mut source, |c| c.objects.len() >= 3);
        let names: Vec<_> = changes.objects.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["w", "x", "y"]);
        assert_eq!(source.model().len(), 1, "w and y went with b.yaml");
        assert_eq!(ip(&source, "x"), ("10.96.0.1".to_owned(), "a.yaml".to_owned()));
    }

    #[test]
    fn an_unlistable_directory_is_an_error_once_not_an_empty_model() {
        let mut source = DirSource::new("/nonexistent/weir-test".into());
        assert!(source.next(Duration::ZERO).is_err());
        assert!(matches!(source.next(Duration::ZERO), Ok(None)));
    }

    #[test]
    fn a_file_that_is_not_text_is_reported_once_per_version() {
        let dir = tempdir("binary");
        fs::write(dir.0.join("a.yaml"), service("a")).expect("write");
        fs::write(dir.0.join("x.yaml"), [0xff, 0xfe, 0x00, b'k', b':']).expect("write");
        let mut source = DirSource::new(dir.0.clone());
        let first = source.next(Duration::ZERO).expect("scan").expect("first read");
        assert_eq!(first.problems.len(), 1, "{:?}", first.problems);
        assert!(
            matches!(&first.problems[0].reason, ProblemReason::Unusable(why) if why.contains("UTF-8")),
            "{}",
            first.problems[0]
        );
        assert_eq!(source.model().services().count(), 1);
        for _ in 0..3 {
            assert!(
                source.next(Duration::from_millis(150)).expect("scan").is_none(),
                "reported again without a change"
            );
        }
        // A new version is a new report (and a fixed file is simply read).
        fs::write(dir.0.join("x.yaml"), [0xff, 0xff]).expect("write");
        assert_eq!(until(&mut source, |c| !c.problems.is_empty()).problems.len(), 1);
        fs::write(dir.0.join("x.yaml"), service("x")).expect("write");
        let fixed = until(&mut source, |c| !c.objects.is_empty());
        assert!(fixed.problems.is_empty(), "{:?}", fixed.problems);
        assert_eq!(source.model().services().count(), 2);
    }

    #[test]
    fn a_large_file_being_parsed_does_not_hold_back_a_small_one() {
        let dir = tempdir("slow");
        fs::write(dir.0.join("small.yaml"), service("small")).expect("write");
        let mut source = DirSource::new(dir.0.clone());
        source.next(Duration::ZERO).expect("scan").expect("first read");

        // Thousands of Services take a parser a while; the small file's change,
        // written after it, is in force before the large one is.
        let big: String = (0..20_000)
            .map(|i| format!("---\n{}", service(&format!("big{i}"))))
            .collect();
        fs::write(dir.0.join("a-big.yaml"), big).expect("write");
        fs::write(
            dir.0.join("small.yaml"),
            service("small").replace("10.96.0.1", "10.96.0.2"),
        )
        .expect("write");
        let small = until(&mut source, |c| c.objects.iter().any(|k| k.name == "small"));
        assert!(
            small.objects.iter().any(|k| k.name == "small"),
            "{:?}",
            small.objects
        );
        assert!(
            !small.objects.iter().any(|k| k.name.starts_with("big")),
            "the small file waited for the large one"
        );
        let all = until(&mut source, |c| c.objects.len() >= 20_000);
        assert_eq!(all.objects.len(), 20_000);
        assert_eq!(source.model().services().count(), 20_001);
    }
}

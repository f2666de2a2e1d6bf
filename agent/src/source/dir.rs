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

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::inotify::{AddWatchFlags, InitFlags, Inotify},
};
use tracing::warn;
use weir_model::{Model, Object, ObjectKey, parse_documents};

use super::{Changes, Source, SourceError};

const POLL: Duration = Duration::from_millis(100);

pub struct DirSource {
    path: PathBuf,
    /// Parsed files by name: a reload parses only the files whose stamp changed
    /// (parsing dominates a reload of a large directory).
    parsed: BTreeMap<String, ParsedFile>,
    /// The files defining each object.
    definers: BTreeMap<ObjectKey, BTreeSet<String>>,
    model: Model,
    /// What the model was built from; `None` before the first read.
    seen: Option<Vec<FileStamp>>,
    /// The last listing error, reported once rather than at every poll.
    last_error: Option<String>,
    /// Wakes the wait early when a file in the directory is written, moved or
    /// deleted; `None` where inotify is unavailable (polling alone then).
    inotify: Option<Inotify>,
}

struct ParsedFile {
    stamp: FileStamp,
    /// By key (a key twice in one file: the later document wins).
    objects: BTreeMap<ObjectKey, Object>,
}

/// What tells us a file changed without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    name: String,
    len: u64,
    mtime: Option<SystemTime>,
    inode: u64,
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
            definers: BTreeMap::new(),
            model: Model::new(),
            seen: None,
            last_error: None,
            inotify,
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

    /// Brings the model to what `files` hold, reading those that changed.
    fn load(&mut self, files: &[FileStamp]) -> Changes {
        let mut changes = Changes::default();
        let listed: BTreeMap<&str, &FileStamp> = files.iter().map(|f| (f.name.as_str(), f)).collect();
        let stale: Vec<String> = self
            .parsed
            .iter()
            .filter(|(name, file)| listed.get(name.as_str()) != Some(&&file.stamp))
            .map(|(name, _)| name.clone())
            .collect();
        let mut touched = BTreeSet::new();
        for name in stale {
            if let Some(file) = self.parsed.remove(&name) {
                for key in file.objects.into_keys() {
                    if let Some(files) = self.definers.get_mut(&key) {
                        files.remove(&name);
                    }
                    touched.insert(key);
                }
            }
        }
        let unread: Vec<&FileStamp> = files
            .iter()
            .filter(|f| !self.parsed.contains_key(&f.name))
            .collect();
        for file in unread {
            let path = self.path.join(&file.name);
            let text = match fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "manifest unreadable: its objects are skipped");
                    continue;
                }
            };
            let (objects, problems) = parse_documents(&text, &file.name);
            changes.problems.extend(problems);
            let objects: BTreeMap<ObjectKey, Object> = objects.into_iter().map(|o| (o.key(), o)).collect();
            for key in objects.keys() {
                let files = self.definers.entry(key.clone()).or_default();
                files.insert(file.name.clone());
                if files.len() > 1 {
                    warn!(object = %key, files = ?files, "object defined in several files: the last one's definition wins");
                }
                touched.insert(key.clone());
            }
            self.parsed.insert(
                file.name.clone(),
                ParsedFile {
                    stamp: file.clone(),
                    objects,
                },
            );
        }
        for key in touched {
            let winner = self.definers.get(&key).and_then(|files| files.last()).cloned();
            let Some(winner) = winner else {
                self.definers.remove(&key);
                if self.model.remove(&key).is_some() {
                    changes.objects.insert(key);
                }
                continue;
            };
            let Some(object) = self.parsed.get(&winner).and_then(|f| f.objects.get(&key)) else {
                continue;
            };
            let entry = self.model.get(&key);
            if entry.is_none_or(|e| e.origin != winner || e.object != *object) {
                self.model.upsert(object.clone(), &winner);
                changes.objects.insert(key);
            }
        }
        changes
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
        loop {
            match self.scan() {
                Ok(files) => {
                    self.last_error = None;
                    if self.seen.as_ref() != Some(&files) {
                        let first = self.seen.is_none();
                        let changes = self.load(&files);
                        // A file that could not be read is not seen: the next
                        // look reads it again.
                        self.seen = Some(
                            files
                                .into_iter()
                                .filter(|f| self.parsed.contains_key(&f.name))
                                .collect(),
                        );
                        if first || !changes.objects.is_empty() || !changes.problems.is_empty() {
                            return Ok(Some(changes));
                        }
                    }
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
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            self.wait_for_change(POLL.min(deadline - now));
        }
    }

    fn model(&self) -> &Model {
        &self.model
    }

    fn describe(&self) -> String {
        format!("dir:{}", self.path.display())
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
        let second = source
            .next(Duration::from_secs(1))
            .expect("scan")
            .expect("changed");
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
            (
                svc.spec
                    .as_ref()
                    .and_then(|s| s.cluster_ip.clone())
                    .unwrap_or_default(),
                origin.to_owned(),
            )
        };
        assert_eq!(cluster_ip(&source), ("10.96.0.9".to_owned(), "b.yaml".to_owned()));
        fs::remove_file(dir.0.join("b.yaml")).expect("rm");
        source
            .next(Duration::from_secs(1))
            .expect("scan")
            .expect("changed");
        assert_eq!(cluster_ip(&source), ("10.96.0.1".to_owned(), "a.yaml".to_owned()));
    }

    #[test]
    fn an_unlistable_directory_is_an_error_once_not_an_empty_model() {
        let mut source = DirSource::new("/nonexistent/weir-test".into());
        assert!(source.next(Duration::ZERO).is_err());
        assert!(matches!(source.next(Duration::ZERO), Ok(None)));
    }
}

//! Writes made on a thread of their own while the syncer goes on deciding.
//!
//! A large step (a cluster's first 100,000 Services: a million backend slots)
//! spends about as long deciding its writes (lookups in what is desired and in
//! what the maps hold) as the kernel spends making them. None of a step's
//! writes depends on another of the same step, so its first writes can go to
//! the kernel, a chunk at a time, while the rest are still being decided; the
//! step still ends with every write made and its result known, in the order
//! the writes were decided.

use std::{
    sync::mpsc,
    thread::{self, JoinHandle},
};

use aya::maps::MapError;

use super::{MapOp, Maps};

/// A chunk's writes and each one's result.
pub type Done<O> = (Vec<O>, Vec<Result<(), MapError>>);

/// The thread and the chunks sent to it whose results are not back yet.
pub struct Writer<O> {
    to: Option<mpsc::Sender<Vec<O>>>,
    from: mpsc::Receiver<Done<O>>,
    in_flight: usize,
    thread: Option<JoinHandle<()>>,
}

impl<O: MapOp + Send + 'static> Writer<O> {
    /// A thread writing through `maps`; `None` if no thread can be had (a pids
    /// limit): the caller writes itself.
    pub fn start(mut maps: Box<dyn Maps<O> + Send>) -> Option<Self> {
        let (to, chunks) = mpsc::channel::<Vec<O>>();
        let (done, from) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("weir-sync-writes".into())
            .spawn(move || {
                for ops in chunks {
                    let results = maps.apply_many(&ops);
                    if done.send((ops, results)).is_err() {
                        break;
                    }
                }
            })
            .ok()?;
        Some(Self {
            to: Some(to),
            from,
            in_flight: 0,
            thread: Some(thread),
        })
    }

    /// Hands `ops` to the thread; gives them back if it is gone (the caller
    /// writes them itself).
    pub fn send(&mut self, ops: Vec<O>) -> Result<(), Vec<O>> {
        let Some(to) = &self.to else { return Err(ops) };
        match to.send(ops) {
            Ok(()) => {
                self.in_flight += 1;
                Ok(())
            }
            Err(mpsc::SendError(ops)) => Err(ops),
        }
    }

    /// The chunks written so far and not yet collected, with their results,
    /// in the order sent (without waiting for the others).
    pub fn ready(&mut self) -> Vec<Done<O>> {
        let mut done = Vec::new();
        while self.in_flight > 0
            && let Ok(chunk) = self.from.try_recv()
        {
            done.push(chunk);
            self.in_flight -= 1;
        }
        done
    }

    /// Every chunk sent and not yet collected, with its results, in the order
    /// sent. A panic of the thread is a panic here: its writes' results are
    /// unknown.
    pub fn collect(&mut self) -> Vec<Done<O>> {
        let mut done = Vec::with_capacity(self.in_flight);
        while self.in_flight > 0 {
            match self.from.recv() {
                Ok(chunk) => done.push(chunk),
                Err(mpsc::RecvError) => {
                    self.to = None;
                    if let Some(Err(panic)) = self.thread.take().map(JoinHandle::join) {
                        std::panic::resume_unwind(panic);
                    }
                    unreachable!("the writer thread ended with chunks in flight");
                }
            }
            self.in_flight -= 1;
        }
        done
    }
}

impl<O> Drop for Writer<O> {
    /// The thread ends once its channel closes (after the chunk in hand).
    fn drop(&mut self) {
        self.to = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

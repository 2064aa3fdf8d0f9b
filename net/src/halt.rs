//! What stops a call before its command ends, and how: the caller going away, the caller
//! being signalled, or the call's deadline passing. A running command is asked again after
//! each answer (a signal may be followed by the caller going away), so what stops it is a
//! source of answers rather than one future.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::watch;
use tokio::time::Instant;

/// Why a call stops before its command has ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Halt {
    /// The caller is gone (its connection closed, or it was killed): the command is
    /// stopped, and nobody is told.
    Gone,
    /// The caller was signalled (Ctrl-C, SIGTERM, SIGHUP): the signal, by its SSH name
    /// (`INT`), goes to the command, which has a moment to end before it is stopped.
    Signal(&'static str),
    /// The call's deadline passed: the command is signalled and stopped at once.
    Deadline,
}

/// What may stop a running call: answers one [`Halt`] at a time, and is asked again.
/// Dropping a pending answer loses nothing.
pub trait Stops {
    fn next(&mut self) -> impl Future<Output = Halt>;
}

/// Stops once, with [`Halt::Gone`], when `F` completes (the caller went away), and never
/// again.
pub struct GoneWhen<F>(Option<Pin<Box<F>>>);

impl<F: Future<Output = ()>> GoneWhen<F> {
    pub fn new(gone: F) -> GoneWhen<F> {
        GoneWhen(Some(Box::pin(gone)))
    }
}

impl<F: Future<Output = ()>> Stops for GoneWhen<F> {
    async fn next(&mut self) -> Halt {
        match &mut self.0 {
            Some(gone) => {
                gone.await;
                self.0 = None;
                Halt::Gone
            }
            None => std::future::pending().await,
        }
    }
}

/// Who tells a call what stops it: its caller's connection, which sets a halt for each
/// signal and [`Halt::Gone`] when it closes.
pub type HaltSender = watch::Sender<Option<Halt>>;

/// A call's halts: what its caller says (through a [`HaltSender`]) and its deadline.
/// Clones (one per node of a fan-out) each hear every halt.
#[derive(Clone, Debug)]
pub struct Halts {
    said: watch::Receiver<Option<Halt>>,
    deadline: Option<Instant>,
    deadline_told: bool,
}

impl Halts {
    /// A sender for a caller, and the halts it makes.
    pub fn channel() -> (HaltSender, Halts) {
        let (tx, rx) = watch::channel(None);
        (tx, Halts { said: rx, deadline: None, deadline_told: false })
    }

    /// Halts nothing ever says (a call nobody can stop but its deadline).
    pub fn none() -> Halts {
        Halts::channel().1
    }

    /// The same, with a deadline (which an earlier one, if any, is replaced by).
    pub fn with_deadline(mut self, deadline: Option<Instant>) -> Halts {
        self.deadline = deadline;
        self.deadline_told = false;
        self
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// What the caller has said so far, if anything (not the deadline).
    pub fn said(&self) -> Option<Halt> {
        *self.said.borrow()
    }
}

impl Stops for Halts {
    async fn next(&mut self) -> Halt {
        loop {
            let deadline = self.deadline.filter(|_| !self.deadline_told);
            tokio::select! {
                () = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                    self.deadline_told = true;
                    return Halt::Deadline;
                }
                changed = self.said.changed() => match changed {
                    Ok(()) => {
                        if let Some(halt) = *self.said.borrow_and_update() {
                            return halt;
                        }
                    }
                    // The caller's side is gone without a word: as good as gone.
                    Err(_) => {
                        if self.deadline.is_none() || self.deadline_told {
                            return std::future::pending().await;
                        }
                        tokio::time::sleep_until(self.deadline.expect("checked")).await;
                        self.deadline_told = true;
                        return Halt::Deadline;
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_call_hears_each_halt_and_its_deadline_once() {
        let (tx, halts) = Halts::channel();
        let mut halts = halts.with_deadline(Some(Instant::now() + Duration::from_millis(200)));
        let mut other = halts.clone();
        tx.send_replace(Some(Halt::Signal("INT")));
        assert_eq!(halts.next().await, Halt::Signal("INT"));
        assert_eq!(other.next().await, Halt::Signal("INT"), "every clone hears it");
        assert_eq!(halts.next().await, Halt::Deadline);
        tx.send_replace(Some(Halt::Gone));
        assert_eq!(halts.next().await, Halt::Gone);
        let waiting = tokio::time::timeout(Duration::from_millis(300), halts.next()).await;
        assert!(waiting.is_err(), "nothing more to hear");
    }

    #[tokio::test]
    async fn gone_when_answers_once() {
        let mut gone = GoneWhen::new(async {});
        assert_eq!(gone.next().await, Halt::Gone);
        assert!(tokio::time::timeout(Duration::from_millis(20), gone.next()).await.is_err());
    }
}

//! Signals as the agent meets them: russh's [`Sig`] on the channel, rustix's [`Signal`]
//! for `kill`, and the names `kill -NAME` and container engines take. Names and numbers
//! come from the one table in [`proto::exec`]; this module only converts.

use russh::Sig;
use rustix::process::Signal;

/// The signals russh has variants for; its `Debug` output spells each as SSH names it.
/// Any other signal travels as `Sig::Custom(NAME)`.
const RUSSH_VARIANTS: [Sig; 12] = [
    Sig::ABRT,
    Sig::ALRM,
    Sig::FPE,
    Sig::HUP,
    Sig::ILL,
    Sig::INT,
    Sig::KILL,
    Sig::PIPE,
    Sig::QUIT,
    Sig::SEGV,
    Sig::TERM,
    Sig::USR1,
];

/// The SSH name (without "SIG") of a signal the caller sent, if the table knows it.
pub fn name(sig: &Sig) -> Option<&'static str> {
    let spelled = match sig {
        Sig::Custom(name) => name.clone(),
        other => format!("{other:?}"),
    };
    let number = proto::exec::signal_number(&spelled)?;
    proto::exec::signal_name(i32::from(number))
}

/// The signal to deliver for one the caller sent, if the table knows it.
pub fn to_signal(sig: &Sig) -> Option<Signal> {
    let number = proto::exec::signal_number(name(sig)?)?;
    Signal::from_named_raw(i32::from(number))
}

/// The SSH name (without "SIG") of `sig`, if the table knows it.
pub fn signal_name(sig: Signal) -> Option<&'static str> {
    proto::exec::signal_name(sig.as_raw())
}

/// How a death by signal number `raw` is reported on the channel. A number the table does
/// not know is passed on as `SIG<n>`.
pub fn from_raw(raw: i32) -> Sig {
    let Some(name) = proto::exec::signal_name(raw) else {
        return Sig::Custom(format!("SIG{raw}"));
    };
    RUSSH_VARIANTS
        .iter()
        .find(|sig| format!("{sig:?}") == name)
        .cloned()
        .unwrap_or_else(|| Sig::Custom(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spelled(sig: &Sig) -> String {
        format!("{sig:?}")
    }

    #[test]
    fn every_russh_variant_is_in_the_shared_table_under_its_own_name() {
        for sig in &RUSSH_VARIANTS {
            assert_eq!(name(sig), Some(spelled(sig).as_str()));
        }
    }

    #[test]
    fn a_death_by_signal_is_reported_by_its_ssh_name() {
        assert_eq!(spelled(&from_raw(15)), "TERM");
        assert_eq!(spelled(&from_raw(9)), "KILL");
        assert_eq!(spelled(&from_raw(12)), spelled(&Sig::Custom("USR2".into())));
        assert_eq!(spelled(&from_raw(5)), spelled(&Sig::Custom("TRAP".into())));
        assert_eq!(spelled(&from_raw(64)), spelled(&Sig::Custom("SIG64".into())));
    }

    #[test]
    fn names_numbers_and_signals_agree_for_every_signal_in_the_table() {
        for (table_name, number) in proto::exec::SIGNALS {
            let sig = from_raw(i32::from(*number));
            assert_eq!(name(&sig), Some(*table_name));
            let signal = to_signal(&sig).unwrap_or_else(|| panic!("{table_name} has no signal"));
            assert_eq!(signal.as_raw(), i32::from(*number));
            assert_eq!(signal_name(signal), Some(*table_name));
        }
    }

    #[test]
    fn a_signal_the_table_does_not_know_is_not_delivered() {
        assert_eq!(name(&Sig::Custom("NOPE".into())), None);
        assert!(to_signal(&Sig::Custom("NOPE".into())).is_none());
        assert!(to_signal(&Sig::Custom("SIG64".into())).is_none());
    }
}

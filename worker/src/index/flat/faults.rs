//! Failures injected into the next row store of this thread (tests only).

use super::IndexError;
use std::cell::Cell;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Fault {
    None,
    /// The store fails as a full GPU would.
    Fail,
    /// The store panics, as a tch call without `f_` does on a device error.
    Panic,
}

thread_local! {
    static NEXT: Cell<Fault> = const { Cell::new(Fault::None) };
}

/// Makes the next row store on this thread fail or panic.
pub(crate) fn inject(fault: Fault) {
    NEXT.with(|n| n.set(fault));
}

pub(super) fn fire() -> Result<(), IndexError> {
    match NEXT.with(|n| n.replace(Fault::None)) {
        Fault::None => Ok(()),
        Fault::Fail => Err(IndexError::Capacity("injected: the device is full".into())),
        Fault::Panic => panic!("injected panic while storing rows"),
    }
}

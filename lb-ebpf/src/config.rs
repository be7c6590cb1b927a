//! Load-time configuration: one read-only global, set by the agent through aya's
//! `override_global` (see `lb_common::config`).

use lb_common::config::DatapathConfig;

#[unsafe(no_mangle)]
static XLB_CONFIG: DatapathConfig = DatapathConfig::DEFAULT;

/// The configuration. `read_volatile` keeps LLVM from folding the defaults into the code:
/// the value is patched into .rodata after compilation.
#[inline(always)]
pub fn get() -> DatapathConfig {
    // SAFETY: a valid, aligned static; volatile only prevents constant folding.
    unsafe { core::ptr::read_volatile(&XLB_CONFIG) }
}

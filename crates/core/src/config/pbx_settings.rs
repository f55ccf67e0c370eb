//! `[pbx_settings]`: the PBX settings a Main or a Standby writes (short SIP
//! expiry, backup proxy for the phones).

use super::node::default_service_timeout;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `[pbx_settings]`: the PBX settings written while this node is a Main or
/// a Standby (short SIP expiry, backup proxy for the phones), and restored
/// byte for byte when `node.type = "disabled"` or the table is removed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PbxSettingsSection {
    /// Run after a file changed (e.g. `asterisk -rx "core reload"`).
    #[serde(default)]
    pub reload: Option<String>,
    #[serde(with = "humantime_serde", default = "default_service_timeout")]
    pub reload_timeout: Duration,
    #[serde(default)]
    pub sip_expiry: Option<SipExpirySection>,
    #[serde(default)]
    pub provisioning: Option<ProvisioningSection>,
}

/// `[pbx_settings.sip_expiry]`: registration expiry bounds (XiVO's HA
/// values by default: 1 min, 5 min, 2 min).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipExpirySection {
    /// `pjsip` (AORs of the file) or `chan_sip` (its `[general]`).
    pub driver: crate::pbx_settings::SipDriver,
    /// `pjsip.conf` (or the included file holding the AORs), or `sip.conf`.
    pub file: PathBuf,
    #[serde(with = "humantime_serde", default = "default_min_expiry")]
    pub min: Duration,
    #[serde(with = "humantime_serde", default = "default_max_expiry")]
    pub max: Duration,
    #[serde(with = "humantime_serde", default = "default_default_expiry")]
    pub default: Duration,
}

impl SipExpirySection {
    pub fn expiry(&self) -> crate::pbx_settings::Expiry {
        crate::pbx_settings::Expiry {
            min: self.min.as_secs(),
            max: self.max.as_secs(),
            default: self.default.as_secs(),
        }
    }
}

/// `[pbx_settings.provisioning]`: a file the provisioning server includes
/// in the phones' line template, Main as proxy/registrar, Standby as backup.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningSection {
    pub file: PathBuf,
    /// The SIP address phones reach each node at.
    pub main: SocketAddr,
    pub standby: SocketAddr,
    /// A template with `{{main_ip}}`, `{{main_port}}`, `{{standby_ip}}`,
    /// `{{standby_port}}`, `{{expiry}}`; default: provd's line settings (JSON).
    #[serde(default)]
    pub template: Option<PathBuf>,
}

fn default_min_expiry() -> Duration {
    Duration::from_secs(crate::pbx_settings::Expiry::default().min)
}
fn default_max_expiry() -> Duration {
    Duration::from_secs(crate::pbx_settings::Expiry::default().max)
}
fn default_default_expiry() -> Duration {
    Duration::from_secs(crate::pbx_settings::Expiry::default().default)
}

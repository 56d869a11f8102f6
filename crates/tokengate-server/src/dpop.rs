//! How the servers check DPoP proofs: on by default, tuned by flags.

use std::time::Duration;

use tokengate::authenticate::{AuthenticateLayer, Dpop};
use tokengate::deployment::SetupError;

/// The DPoP flags, flattened into each server's arguments. DPoP-bound
/// tokens work with no flag at all; these tune the checks.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DpopArgs {
    /// The origin clients call, for DPoP proofs' `htu`
    /// (`https://api.example.com`), when a proxy in front rewrites `Host`
    /// without saying so in a trusted `X-Forwarded-Host`.
    #[arg(long)]
    pub dpop_origin: Option<String>,
    /// Require DPoP server nonces, a new one every this long (e.g. 5m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub dpop_nonce_period: Option<Duration>,
    /// How far a DPoP proof's `iat` may be from now, in seconds (1 to 600).
    #[arg(long, default_value_t = 60)]
    pub dpop_iat_window: u64,
    /// Read no `Authorization: DPoP` (DPoP-bound tokens are then refused).
    #[arg(long, conflicts_with_all = ["dpop_origin", "dpop_nonce_period"])]
    pub no_dpop: bool,
}

impl DpopArgs {
    /// The settings, checked (an error names the bad value); `None` with
    /// `--no-dpop`.
    pub fn settings(&self) -> Result<Option<Dpop>, SetupError> {
        if self.no_dpop {
            return Ok(None);
        }
        let mut dpop = Dpop::new().iat_window(Duration::from_secs(self.dpop_iat_window))?;
        if let Some(origin) = &self.dpop_origin {
            dpop = dpop.external_origin(origin)?;
        }
        if let Some(period) = self.dpop_nonce_period {
            dpop = dpop.nonces(period)?;
        }
        Ok(Some(dpop))
    }

    /// `layer` with these settings.
    pub fn apply<St>(
        &self,
        layer: AuthenticateLayer<St>,
    ) -> Result<AuthenticateLayer<St>, SetupError> {
        Ok(match self.settings()? {
            Some(dpop) => layer.dpop(dpop),
            None => layer.no_dpop(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_named() {
        let window = DpopArgs {
            dpop_iat_window: 0,
            ..DpopArgs::default()
        };
        assert!(window.settings().unwrap_err().to_string().contains("0ns"));
        let origin = DpopArgs {
            dpop_origin: Some("api.example.com/x".into()),
            dpop_iat_window: 60,
            ..DpopArgs::default()
        };
        assert!(
            origin
                .settings()
                .unwrap_err()
                .to_string()
                .contains("api.example.com/x")
        );
        let nonce = DpopArgs {
            dpop_nonce_period: Some(Duration::from_secs(1)),
            dpop_iat_window: 60,
            ..DpopArgs::default()
        };
        assert!(nonce.settings().unwrap_err().to_string().contains("1s"));
        let off = DpopArgs {
            no_dpop: true,
            ..DpopArgs::default()
        };
        assert!(off.settings().unwrap().is_none());
    }
}

// Package envfirst fixes the environment before any Tailscale package reads it. Go
// initializes ready packages in import-path order, and this one needs only os, so it runs
// before every tailscale.com package (all of which sort after it and need os too).
package envfirst

import "os"

func init() {
	// Never upload logs to Tailscale, and never fall back to its public servers for
	// bootstrap DNS: these processes talk only to the control server they are given.
	os.Setenv("TS_NO_LOGS_NO_SUPPORT", "true")
	// Credentials come only through the API, never from a stray environment variable.
	for _, name := range []string{"TS_AUTHKEY", "TS_AUTH_KEY", "TS_CLIENT_SECRET", "TS_CLIENT_ID", "TS_ID_TOKEN", "TS_AUDIENCE"} {
		os.Unsetenv(name)
	}
}

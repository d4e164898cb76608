package eic

import "crypto/ed25519"

// SetKeyHook exposes each generated private key to the tests that prove it
// never leaves memory.
func SetKeyHook(fn func(ed25519.PrivateKey)) { testKeyHook = fn }

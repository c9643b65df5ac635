package agent

// SetCrashHook sets the hook every crash point calls (nil: none) and
// returns a function that removes it.
func SetCrashHook(h func(point string)) (restore func()) {
	if h == nil {
		crashHook.Store(nil)
	} else {
		crashHook.Store(&h)
	}
	return func() { crashHook.Store(nil) }
}

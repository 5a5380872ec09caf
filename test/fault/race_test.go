//go:build race

package fault

// raceNote qualifies memory figures: the race detector's shadow memory inflates RSS.
const raceNote = " (race detector on: RSS includes its shadow memory)"

const raceEnabled = true

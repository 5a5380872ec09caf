//go:build !race

package fault

const raceNote = ""

const raceEnabled = false

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/anytls-engine/anytls/protocol"
)

func init() {
	register(&command{
		Name:  "padding",
		Short: "check a padding scheme file: errors by line, its md5, sample record sizes",
		Run: func(args []string) error {
			return paddingMain(args, os.Stdin, os.Stdout, os.Stderr)
		},
	})
}

// defaultSamplePackets are framed lengths (frame headers included) of a session's packets 1, 2,
// ...: settings + SYN + an IPv4 address, then what a TLS-in-TLS connection starts with (a
// ClientHello, the client's second flight, requests).
const defaultSamplePackets = "105,524,87,47,707,8,307,1007"

// paddingMain runs the padding command.
func paddingMain(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("padding", "[-packets LIST] [-samples N] [FILE | -f FILE]")
	fs.SetOutput(stderr)
	file := fs.String("f", "", "padding scheme `file` to check, also accepted as the argument (\"-\": standard input; default: the protocol's default scheme)")
	packetList := fs.String("packets", defaultSamplePackets, "framed `lengths` of packets 1, 2, ... (frame headers included) to lay out")
	samples := fs.Int("samples", 3, "`number` of sample sessions to draw")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	switch {
	case fs.NArg() == 1 && *file == "":
		*file = fs.Arg(0)
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "unexpected arguments: %s\n", strings.Join(fs.Args(), " "))
		fs.Usage()
		return errUsage
	}
	if *samples < 1 || *samples > 20 {
		fmt.Fprintf(stderr, "-samples %d: want 1 to 20\n", *samples)
		return errUsage
	}
	packets, err := parsePacketList(*packetList)
	if err != nil {
		fmt.Fprintf(stderr, "-packets %q: %v\n", *packetList, err)
		return errUsage
	}

	name := "(default scheme)"
	text := []byte(protocol.DefaultPaddingSchemeText)
	switch *file {
	case "":
	case "-":
		name = "(standard input)"
		if text, err = io.ReadAll(stdin); err != nil {
			return err
		}
	default:
		name = *file
		if text, err = os.ReadFile(*file); err != nil {
			return err
		}
	}
	scheme, err := protocol.ParsePaddingScheme(text)
	if err != nil {
		var pe *protocol.PaddingSchemeError
		if errors.As(err, &pe) && pe.Line > 0 {
			return fmt.Errorf("%s:%d: %s (the line reads %q)", name, pe.Line, pe.Reason, pe.Text)
		}
		if errors.As(err, &pe) {
			return fmt.Errorf("%s: %s", name, pe.Reason)
		}
		return fmt.Errorf("%s: %w", name, err)
	}

	fmt.Fprintf(stdout, "%s: a valid padding scheme (%d bytes)\n", name, len(text))
	fmt.Fprintf(stdout, "md5: %s\n", scheme.MD5())
	for _, w := range schemeWarnings(scheme, text) {
		fmt.Fprintf(stdout, "warning: %s\n", w)
	}
	fmt.Fprintf(stdout, "stop=%d: packets 0 to %d follow their lines; later packets go out as is\n", scheme.Stop(), scheme.Stop()-1)
	fmt.Fprintln(stdout, "\nSample record sizes (TLS plaintext bytes of each record; TLS 1.3 adds 22 bytes per record on the wire):")

	lines := schemeLines(text)
	tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
	fmt.Fprint(tw, "packet\tbytes\tline")
	for i := range *samples {
		fmt.Fprintf(tw, "\tsample %d", i+1)
	}
	fmt.Fprintln(tw)
	rows := make([][]string, len(packets)+1)
	for range *samples {
		pad := scheme.AuthPadding()
		rows[0] = append(rows[0], strconv.Itoa(34+pad))
		for i, n := range packets {
			rows[i+1] = append(rows[i+1], joinInts(layoutPacket(scheme, i+1, n)))
		}
	}
	for i, row := range rows {
		bytesCol := "34+pad"
		if i > 0 {
			bytesCol = strconv.Itoa(packets[i-1])
		}
		line := lines[i]
		if line == "" {
			line = "-"
			if i >= scheme.Stop() {
				line = "(after stop)"
			}
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", i, bytesCol, line, strings.Join(row, "\t"))
	}
	return tw.Flush()
}

func parsePacketList(s string) ([]int, error) {
	var out []int
	for item := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(item))
		if err != nil || n < 1 || n > 1<<20 {
			return nil, fmt.Errorf("%q is not a length from 1 to %d", item, 1<<20)
		}
		out = append(out, n)
	}
	return out, nil
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, " ")
}

// layoutPacket returns the record sizes (TLS plaintext) of a data packet numbered pkt with n
// framed bytes, following spec §6.1 as the engine does: data cut to the listed sizes; the
// record where the data ends is filled with a cmdWaste frame when one fits (7 bytes or more);
// records after the data are one cmdWaste frame of the listed size, header included, at least
// 7 bytes; a check mark ends the packet when no data is left; data left after the list goes
// out as is.
func layoutPacket(p *protocol.PaddingScheme, pkt, n int) []int {
	sizes, ok := p.RecordSizes(pkt, nil)
	if !ok {
		return []int{n}
	}
	var out []int
	for _, size := range sizes {
		if size == protocol.CheckMark {
			if n == 0 {
				break
			}
			continue
		}
		switch {
		case n >= size:
			out = append(out, size)
			n -= size
		case n > 0:
			if size-n >= protocol.HeaderSize {
				out = append(out, size)
			} else {
				out = append(out, n)
			}
			n = 0
		default:
			out = append(out, max(size, protocol.HeaderSize))
		}
	}
	if n > 0 {
		out = append(out, n)
	}
	return out
}

// schemeLines returns the value of line k of the scheme text at index k ("" where none).
func schemeLines(text []byte) map[int]string {
	out := map[int]string{}
	for line := range strings.SplitSeq(string(text), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		if n, err := strconv.Atoi(strings.TrimSpace(k)); err == nil {
			out[n] = strings.TrimSpace(v)
		}
	}
	return out
}

// schemeWarnings reports what is valid but probably not meant: sizes TLS cannot send as one
// record, lines that are never used, packets before stop without a line, and text that the
// deployed clients (sing-anytls, mihomo) read differently from us. A deployed client that
// cannot use a pushed scheme keeps its own, so the server pushes again on every session.
func schemeWarnings(p *protocol.PaddingScheme, text []byte) []string {
	var out []string
	lines := schemeLines(text)
	for k := range max(p.Stop(), 0) {
		if _, ok := lines[k]; !ok && k > 0 {
			out = append(out, fmt.Sprintf("packet %d is before stop=%d but has no line: it goes out as is", k, p.Stop()))
		}
	}
	for i, line := range strings.Split(string(text), "\n") {
		lineNo := i + 1
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		if k, err := strconv.Atoi(strings.TrimSpace(key)); err == nil && k >= p.Stop() {
			out = append(out, fmt.Sprintf("line %d: packet %d is at or after stop=%d: the line is never used", lineNo, k, p.Stop()))
		}
		for item := range strings.SplitSeq(value, ",") {
			lo, hi, ok := strings.Cut(strings.TrimSpace(item), "-")
			if !ok {
				continue
			}
			a, _ := strconv.Atoi(strings.TrimSpace(lo))
			b, _ := strconv.Atoi(strings.TrimSpace(hi))
			if max(a, b) > 16384 {
				out = append(out, fmt.Sprintf("line %d: size %s is above 16384, the largest TLS record: TLS splits such a record", lineNo, strings.TrimSpace(item)))
			}
		}
		if reason := deployedReading(key, value); reason != "" {
			out = append(out, fmt.Sprintf("line %d: deployed clients (sing-anytls, mihomo) %s", lineNo, reason))
		}
	}
	if strings.TrimSpace(string(text)) == protocol.DefaultPaddingSchemeText && string(text) != protocol.DefaultPaddingSchemeText {
		out = append(out, "this is the default scheme with different white space: its md5 differs from the default's, so the server pushes it to every client")
	}
	return out
}

// deployedReading says how the deployed clients' parser (exact keys and values, no trimming,
// items it cannot parse skipped without an error) reads a line differently from ours; "" when
// it reads it the same.
func deployedReading(key, value string) string {
	if key != strings.TrimSpace(key) {
		return fmt.Sprintf("read the key as %q (white space kept), so the line is lost", key)
	}
	if key == "stop" {
		if _, err := strconv.Atoi(value); err != nil {
			return fmt.Sprintf("cannot read stop=%q (white space kept): they reject the whole scheme", value)
		}
		return ""
	}
	for item := range strings.SplitSeq(value, ",") {
		if item == "c" {
			continue
		}
		lo, hi, ok := strings.Cut(item, "-")
		_, errA := strconv.ParseInt(lo, 10, 64)
		_, errB := strconv.ParseInt(hi, 10, 64)
		if !ok || errA != nil || errB != nil {
			return fmt.Sprintf("cannot read the item %q (white space kept) and skip it", item)
		}
	}
	return ""
}

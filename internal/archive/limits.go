package archive

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
)

// ErrLimit is wrapped by the error for an archive that exceeds its Limits.
var ErrLimit = errors.New("archive exceeds a limit")

// Limits bound what one archive may expand to; a zero field is no bound.
// See the package documentation for the defaults and why.
type Limits struct {
	MaxBytes   int64   // total apparent size of all entries
	MaxEntries int64   // number of entries
	MaxRatio   float64 // extracted bytes per archive byte read...
	RatioAfter int64   // ...checked once more than this was extracted
}

// DefaultLimits are the limits an ADD of a local archive runs with.
var DefaultLimits = Limits{
	MaxBytes:   16 << 30,
	MaxEntries: 1 << 20,
	MaxRatio:   100,
	RatioAfter: 64 << 20,
}

// Meter enforces Limits on one archive. Wrap the raw (still compressed)
// input with Input so the ratio sees what was read, call Entry for every
// header and read entry data through Data.
type Meter struct {
	limits    Limits
	raw       int64 // archive bytes read
	extracted int64 // entry bytes read (apparent size)
	declared  int64 // sum of header sizes
	entries   int64
}

// NewMeter returns a meter enforcing l.
func NewMeter(l Limits) *Meter { return &Meter{limits: l} }

// Input counts the archive bytes read from r.
func (m *Meter) Input(r io.Reader) io.Reader { return &rawCounter{r: r, m: m} }

type rawCounter struct {
	r io.Reader
	m *Meter
}

func (c *rawCounter) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.m.raw += int64(n)
	return n, err
}

// Entry accounts for one header: the entry count and the declared sizes
// are checked before any byte of the entry is written, so an 8 GiB file
// over the limit is refused at once.
func (m *Meter) Entry(h *tar.Header) error {
	m.entries++
	if l := m.limits.MaxEntries; l > 0 && m.entries > l {
		return fmt.Errorf("more than %d entries: %w", l, ErrLimit)
	}
	if h.Size > 0 {
		m.declared += h.Size
	}
	if l := m.limits.MaxBytes; l > 0 && m.declared > l {
		return fmt.Errorf("%s holds %s, more than the %s an archive may expand to: %w",
			h.Name, size(h.Size), size(l), ErrLimit)
	}
	return nil
}

// Data returns the entry body r, counted against the limits as it is read.
func (m *Meter) Data(r io.Reader) io.Reader { return &dataCounter{r: r, m: m} }

type dataCounter struct {
	r io.Reader
	m *Meter
}

// Read returns no bytes with a limit's error: io.ReadFull would drop an
// error that came with a full buffer and read on.
func (c *dataCounter) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.m.extracted += int64(n)
	if lerr := c.m.check(); lerr != nil {
		return 0, lerr
	}
	return n, err
}

func (m *Meter) check() error {
	l := m.limits
	if l.MaxBytes > 0 && m.extracted > l.MaxBytes {
		return fmt.Errorf("expands past %s: %w", size(l.MaxBytes), ErrLimit)
	}
	if l.MaxRatio > 0 && m.extracted > l.RatioAfter && float64(m.extracted) > l.MaxRatio*float64(max(m.raw, 1)) {
		return fmt.Errorf("expands %s from %s read, more than %g times: %w",
			size(m.extracted), size(m.raw), l.MaxRatio, ErrLimit)
	}
	return nil
}

// size formats n bytes for messages.
func size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for x := n / unit; x >= unit; x /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

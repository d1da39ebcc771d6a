package v1alpha1_test

import (
	"testing"
	"time"

	"github.com/berth-io/berth/api/v1alpha1"
)

func TestIPPoolSpec_ParseReservationTTL(t *testing.T) {
	for _, tc := range []struct {
		name, ttl string
		want      time.Duration
		err       string
	}{
		{name: "unset is the default", want: v1alpha1.DefaultReservationTTL},
		{name: "hours", ttl: "24h", want: 24 * time.Hour},
		{name: "mixed units", ttl: "1h30m", want: 90 * time.Minute},
		{name: "days are no unit", ttl: "1d", err: `reservationTTL "1d": time: unknown unit "d" in duration "1d" (want a positive duration such as 24h, 90m or 1h30m; 7 days is 168h)`},
		{name: "no unit", ttl: "3600", err: `reservationTTL "3600": time: missing unit in duration "3600" (want a positive duration such as 24h, 90m or 1h30m; 7 days is 168h)`},
		{name: "zero", ttl: "0s", err: `reservationTTL "0s": want a positive duration`},
		{name: "negative", ttl: "-5m", err: `reservationTTL "-5m": want a positive duration`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := v1alpha1.IPPoolSpec{ReservationTTL: tc.ttl}
			got, err := s.ParseReservationTTL()
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("err = %v, want %s", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("= %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// FuzzIPPoolSpec_ParseReservationTTL: any string parses to a positive
// duration or fails, without panicking; what parses parses again the same
// from its canonical form.
func FuzzIPPoolSpec_ParseReservationTTL(f *testing.F) {
	for _, s := range []string{"24h", "1h30m", "1d", "0s", "-1h", "1.5h", ".5s", "9999999999999h", "µs"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ttl string) {
		s := v1alpha1.IPPoolSpec{ReservationTTL: ttl}
		d, err := s.ParseReservationTTL()
		if err != nil {
			return
		}
		if d <= 0 {
			t.Fatalf("%q: parsed as %v, not positive", ttl, d)
		}
		again := v1alpha1.IPPoolSpec{ReservationTTL: d.String()}
		if d2, err := again.ParseReservationTTL(); err != nil || d2 != d {
			t.Fatalf("%q: %v, but its canonical form %q parses as %v, %v", ttl, d, d.String(), d2, err)
		}
	})
}

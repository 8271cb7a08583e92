package authlimit_test

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/pgtrust/pgtrust/internal/authlimit"
)

func Example() {
	l := authlimit.New(authlimit.Options{Base: 100 * time.Millisecond, Max: 5 * time.Second})
	src := authlimit.Key(netip.MustParseAddr("2001:db8:7:7::42"))
	for range 3 {
		l.Failed(src) // wrong password
	}
	fmt.Println(src, l.Delay(src)) // wait this long before answering the next attempt
	l.Succeeded(src)
	fmt.Println(l.Delay(src))
	// Output:
	// 2001:db8:7:7::/64 400ms
	// 0s
}

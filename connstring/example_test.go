package connstring_test

import (
	"fmt"

	"github.com/pgtrust/pgtrust/connstring"
	"github.com/pgtrust/pgtrust/failure"
)

func Example() {
	env := map[string]string{"PGAPPNAME": "billing"}
	cfg, err := connstring.ParseWithEnv(
		"postgresql://app:s3cret@db1.example:5432,db2.example:5433/orders?sslrootcert=system",
		env, "/home/app")
	if err != nil {
		panic(err)
	}
	for _, h := range cfg.Hosts {
		fmt.Println(h.Display(), h.Port)
	}
	fmt.Println(cfg.SSLMode, cfg.SSLModeExplicit)
	fmt.Println(cfg) // secrets are masked

	_, err = connstring.ParseWithEnv("host=db sslmode=require sslrootcert=system", nil, "/home/app")
	fmt.Println(failure.ClassOf(err), err)
	// Output:
	// db1.example 5432
	// db2.example 5433
	// verify-full false
	// user=app password=******** dbname=orders host=db1.example,db2.example port=5432,5433 application_name=billing sslrootcert=system
	// config_invalid weak sslmode "require" may not be used with sslrootcert=system (use "verify-full")
}

package pgtrust

// For the external tests (package pgtrust_test).
type FrontDoorWorld = frontDoorWorld

var NewFrontDoorWorld = newFrontDoorWorld

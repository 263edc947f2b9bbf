// Private networking (main.bicep `privateNetworking`): one VNet with a subnet the Flex Consumption app joins
// (delegated to Microsoft.App/environments, as Flex requires) and a subnet for private endpoints, plus the
// private DNS zones that make storage and Key Vault resolve to those endpoints inside the VNet. Zone names
// come from environment(), so sovereign clouds get their own suffixes.
param name string
param location string
param tags object

@description('Address space of the VNet.')
param addressPrefix string = '10.40.0.0/16'
@description('Subnet the app joins (Flex Consumption needs at least a /27 of its own).')
param appSubnetPrefix string = '10.40.1.0/24'
@description('Subnet of the private endpoints.')
param endpointSubnetPrefix string = '10.40.2.0/24'

var appSubnetName = 'app'
var endpointSubnetName = 'private-endpoints'

// Storage: blob (host + deployment package), queue (the host's storage probes), table (the service's data).
// Key Vault's private zone is privatelink.vaultcore.<suffix>, not privatelink.vault.<suffix>.
var zoneNames = {
  blob: 'privatelink.blob.${environment().suffixes.storage}'
  queue: 'privatelink.queue.${environment().suffixes.storage}'
  table: 'privatelink.table.${environment().suffixes.storage}'
  vault: 'privatelink${replace(environment().suffixes.keyvaultDns, '.vault.', '.vaultcore.')}'
}

// Outbound: the app still calls Microsoft (sign-in, Graph, IMAP for the access check) and webhook
// receivers on the internet. New subnets have no default outbound access, so the app subnet goes out
// through a NAT gateway, which also gives the service one fixed outbound address to allowlist.
resource outboundIp 'Microsoft.Network/publicIPAddresses@2024-05-01' = {
  name: '${name}-outbound'
  location: location
  tags: tags
  sku: {
    name: 'Standard'
  }
  properties: {
    publicIPAllocationMethod: 'Static'
    publicIPAddressVersion: 'IPv4'
  }
}

resource nat 'Microsoft.Network/natGateways@2024-05-01' = {
  name: '${name}-nat'
  location: location
  tags: tags
  sku: {
    name: 'Standard'
  }
  properties: {
    idleTimeoutInMinutes: 4
    publicIpAddresses: [
      {
        id: outboundIp.id
      }
    ]
  }
}

resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    subnets: [
      {
        name: appSubnetName
        properties: {
          addressPrefix: appSubnetPrefix
          natGateway: {
            id: nat.id
          }
          delegations: [
            {
              name: 'flex-consumption'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
        }
      }
      {
        name: endpointSubnetName
        properties: {
          addressPrefix: endpointSubnetPrefix
          privateEndpointNetworkPolicies: 'Disabled'
        }
      }
    ]
  }
}

module zones 'private-dns-zone.bicep' = [for zone in items(zoneNames): {
  name: 'dns-${zone.key}'
  params: {
    zoneName: zone.value
    vnetId: vnet.id
    tags: tags
  }
}]

output outboundAddress string = outboundIp.properties.ipAddress
output appSubnetId string = resourceId('Microsoft.Network/virtualNetworks/subnets', vnet.name, appSubnetName)
output endpointSubnetId string = resourceId('Microsoft.Network/virtualNetworks/subnets', vnet.name, endpointSubnetName)
output blobZoneId string = resourceId('Microsoft.Network/privateDnsZones', zoneNames.blob)
output queueZoneId string = resourceId('Microsoft.Network/privateDnsZones', zoneNames.queue)
output tableZoneId string = resourceId('Microsoft.Network/privateDnsZones', zoneNames.table)
output vaultZoneId string = resourceId('Microsoft.Network/privateDnsZones', zoneNames.vault)
